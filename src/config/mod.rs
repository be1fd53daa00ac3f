//! Server settings: command-line flags, each also a `MESHTALK_*` environment
//! variable, over an optional TOML file (`--config`), over defaults.
//!
//! `args.rs` holds the flags, which are also the file's keys, and reading
//! the file; `settings.rs` resolves them into the [`Settings`] a server
//! runs with.

mod args;
mod settings;

use std::path::PathBuf;

pub use args::{LogFormat, ServeArgs, parse_size};
pub use settings::{ConnectionBounds, Settings, StoreLocation, TlsFiles};

pub const DEFAULT_GRPC_PORT: u16 = 50051;
pub const DEFAULT_TALK_PORT: u16 = 8889;
pub const DEFAULT_WIRE_PORT: u16 = 8890;
pub const DEFAULT_HTTP_PORT: u16 = 8080;
pub const DEFAULT_MAX_CONNECTIONS: usize = 65_536;
pub const DEFAULT_BIND: &str = "127.0.0.1";
/// The mesh port when `--mesh-addr` names only a host.
pub const DEFAULT_MESH_PORT: u16 = 9999;
pub const DEFAULT_DATA_DIR: &str = "meshtalk-data";
pub const DEFAULT_LOGIN_TIMEOUT_SECS: u64 = 30;
pub const DEFAULT_READ_TIMEOUT_SECS: u64 = 10;
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 256;
pub const DEFAULT_SEND_RATE: f64 = 20.0;
pub const DEFAULT_SEND_BURST: u32 = 60;
pub const DEFAULT_MIN_FREE_DISK: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("bad config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("unsupported store URL {0:?}: use sqlite://PATH or postgres://USER@HOST:PORT/DB")]
    StoreUrl(String),
    #[error("{0}")]
    Invalid(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_the_file_and_defaults_fill_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("meshtalk.toml");
        std::fs::write(
            &file,
            "bind = \"0.0.0.0\"\nnode-name = \"from-file\"\noperator = [\"root\"]\nmax-body = 100\n",
        )
        .unwrap();
        let settings = ServeArgs {
            config: Some(file),
            node_name: Some("from-flag".into()),
            operator: vec!["alice".into()],
            ..Default::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(settings.node, "from-flag");
        assert_eq!(settings.grpc_addr, "0.0.0.0:50051");
        assert_eq!(settings.talk_addr, "0.0.0.0:8889");
        assert_eq!(settings.wire_addr, "0.0.0.0:8890");
        assert_eq!(settings.operators, vec!["alice", "root"]);
        assert_eq!(settings.limits.max_body, 100);
        assert_eq!(
            settings.store,
            StoreLocation::Sqlite(PathBuf::from("meshtalk-data/meshtalk.db"))
        );
    }

    #[test]
    fn unknown_keys_and_store_schemes_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, "colour = \"blue\"\n").unwrap();
        let err = ServeArgs {
            config: Some(file),
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        assert!(err.to_string().contains("colour"), "{err}");
        let err = ServeArgs {
            store: Some("mysql://x".into()),
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        assert!(matches!(err, ConfigError::StoreUrl(_)));
    }

    #[test]
    fn a_postgres_store_keeps_the_nodes_own_files_in_the_data_dir() {
        let settings = ServeArgs {
            store: Some("postgres://chat:s3cret@db.internal:5432/meshtalk".into()),
            data_dir: Some("/var/lib/meshtalk".into()),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(
            settings.store,
            StoreLocation::Postgres("postgres://chat:s3cret@db.internal:5432/meshtalk".into())
        );
        assert_eq!(settings.data_dir, PathBuf::from("/var/lib/meshtalk"));
        assert_eq!(
            settings.store.shown(),
            "postgres://chat:***@db.internal:5432/meshtalk"
        );
    }
}
