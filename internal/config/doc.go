// Package config reads Ganglion's homeserver configuration.
//
// The format is Synapse's: the same key names and meanings, so an existing
// Synapse homeserver.yaml plus per-worker files can be pointed at Ganglion
// unchanged. Keys Ganglion does not know are ignored and reported in
// Config.UnknownKeys; keys of Synapse features Ganglion has not built yet
// (NotBuilt) are reported in Config.NotBuiltKeys, which the process warns
// about at start.
//
// Load applies, in order:
//
//  1. Each file is parsed and type-checked on its own, so type errors carry the
//     file name and line.
//  2. The files are deep-merged in order: mappings merge key by key, while
//     scalars and lists in a later file replace the earlier value. An explicit
//     null removes the key, which brings back the default.
//  3. Relative file paths set in the files are resolved against the directory
//     of the FIRST file (not of the file that set them), because a shared file
//     plus per-worker files usually live side by side and this rule is easy to
//     explain.
//  4. GANGLION_DATABASE_URL and GANGLION_REDIS_URL override the database and
//     redis sections. Paths in them are used as given (relative to the working
//     directory), like any path typed in a shell.
//  5. Defaults fill what is still unset, legacy keys are mapped to their
//     modern form (worker_replication_host/_http_port to instance_map.main,
//     "master" to "main"), and secret files, the TLS certificate (when a
//     listener has tls: true) and the log config are read.
//  6. Validate collects every problem, each with its key path.
//
// The main process's instance name is "main"; Synapse's "master" is accepted
// wherever an instance name is expected and rewritten to "main".
package config
