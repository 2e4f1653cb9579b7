package config

// UserDirectoryConfig is Synapse's user_directory section.
type UserDirectoryConfig struct {
	// Enabled: false answers every search with no results (Synapse).
	Enabled bool `yaml:"enabled"`
	// SearchAllUsers: every local user is searchable, not only those who
	// share a room with the searcher or are in a public room.
	SearchAllUsers bool `yaml:"search_all_users"`
	// PreferLocalUsers ranks users of this server first.
	PreferLocalUsers bool `yaml:"prefer_local_users"`
	// ExcludeRemoteUsers returns only users of this server.
	ExcludeRemoteUsers bool `yaml:"exclude_remote_users"`
}
