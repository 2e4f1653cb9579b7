package config

// ExperimentalFeatures is Synapse's experimental_features section. Only
// the keys below do something in Ganglion; Synapse's others are accepted
// and ignored.
type ExperimentalFeatures struct {
	// MSC3814Enabled serves dehydrated devices (MSC3814) under
	// /_matrix/client/unstable/org.matrix.msc3814.v1/ (default off, as in
	// Synapse).
	MSC3814Enabled bool `yaml:"msc3814_enabled"`
}
