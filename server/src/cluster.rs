//! The cluster file (`cluster.toml`): which node owns which partition, how nodes reach each
//! other, the secret they prove to each other, and optionally the certificates of mutual TLS
//! between them. Every node of a cluster reads the same file; `wallet node --config
//! cluster.toml --id N` runs node `N`. See `cluster.example.toml` at the repository root for a
//! commented example.
//!
//! ```toml
//! map_version = 1          # every peer frame carries it; nodes of other versions are refused
//! partitions = 12          # fixed for the cluster's life (accounts hash modulo this)
//! secret_file = "secret"   # or `secret = "..."`; WALLET_CLUSTER_SECRET overrides both
//! owners = [0, 1, 2, ...]  # optional: owners[p] owns partition p; default: an even spread
//! replicas = 3             # optional: copies of each partition, 1 to the node count;
//!                          # default 3 on 3 nodes or more, 1 below
//!
//! [[nodes]]
//! id = 0
//! http = "127.0.0.1:8080"  # the HTTP API
//! peer = "127.0.0.1:9080"  # the node-to-node protocol
//!
//! [tls]                    # optional: peer links under mutual TLS (see `TlsPaths`)
//! ca = "ca.pem"
//! cert = "node-{id}.pem"   # `{id}` is the node's id, so one file serves every node
//! key = "node-{id}.key"
//! ```
//!
//! Parsing turns the file into a [`PartitionMap`], the secret and the TLS paths, and refuses
//! anything a cluster could not run on with an error that names the field to fix. The PEM
//! files themselves are read by [`crate::tls`].

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use walletd_core::model::partition::{MapError, NodeAddress, NodeId, PartitionMap, PARTITIONS_MAX};
use walletd_runtime::net::SECRET_LEN_MIN;

/// The environment variable whose value, when set and not empty, is the cluster secret.
pub const SECRET_ENV: &str = "WALLET_CLUSTER_SECRET";
/// Most nodes a cluster file may list.
pub const NODES_MAX: usize = 1024;

/// The file as written; see the module docs.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClusterFile {
    map_version: u64,
    partitions: u32,
    #[serde(default)]
    owners: Option<Vec<NodeId>>,
    #[serde(default)]
    replicas: Option<u32>,
    #[serde(default)]
    secret: Option<String>,
    #[serde(default)]
    secret_file: Option<PathBuf>,
    #[serde(default)]
    nodes: Vec<NodeEntry>,
    #[serde(default)]
    tls: Option<TlsSection>,
}

/// The `[tls]` section as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsSection {
    ca: String,
    cert: String,
    key: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeEntry {
    id: NodeId,
    http: String,
    peer: String,
}

/// A cluster ready to run: the partition map, the shared secret, and whether peer links run
/// under mutual TLS.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    pub map: PartitionMap,
    /// Copies of each partition: 1 (each partition on its owner alone), or more (every
    /// partition a Raft group with replicas on its owner and the nodes after it in id
    /// order, whose leader is elected).
    pub replicas: u32,
    pub secret: Vec<u8>,
    /// The `[tls]` section; without one, peer links are plain TCP.
    pub tls: Option<TlsPaths>,
}

/// The PEM files of mutual TLS between nodes, from the `[tls]` section: the cluster's CA,
/// and each node's certificate and key. Paths are relative to the cluster file's directory,
/// and `{id}` in them stands for the node's id: nodes on one machine can share one file, and
/// nodes on their own machines can use the same file with each its own `cert` and `key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsPaths {
    base: PathBuf,
    ca: String,
    cert: String,
    key: String,
}

/// The PEM files of one node's mutual TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The CA every node's certificate must be signed by.
    pub ca: PathBuf,
    /// The node's certificate (then any intermediates), for the host of its `peer` address.
    pub cert: PathBuf,
    /// The certificate's private key.
    pub key: PathBuf,
}

impl TlsPaths {
    /// The files of node `id`.
    pub fn for_node(&self, id: NodeId) -> TlsFiles {
        let path = |template: &str| self.base.join(template.replace("{id}", &id.to_string()));
        TlsFiles {
            ca: path(&self.ca),
            cert: path(&self.cert),
            key: path(&self.key),
        }
    }
}

impl std::fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret, not even in a debug log.
        f.debug_struct("ClusterConfig")
            .field("map", &self.map)
            .field("replicas", &self.replicas)
            .field("secret", &"<redacted>")
            .field("tls", &self.tls)
            .finish()
    }
}

/// Why a cluster file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ClusterConfigError {
    #[error("cannot read the cluster file {path}: {source}")]
    Read { path: String, source: io::Error },
    #[error("{path} is not a valid cluster file: {message}")]
    Parse { path: String, message: String },
    #[error("map_version must be at least 1")]
    MapVersion,
    #[error("partitions must be between 1 and {PARTITIONS_MAX}, got {0}")]
    Partitions(u32),
    #[error("the cluster file lists no [[nodes]]")]
    NoNodes,
    #[error("the cluster file lists {0} nodes; at most {NODES_MAX} are allowed")]
    TooManyNodes(usize),
    #[error("node id {0} is listed twice")]
    DuplicateNode(NodeId),
    #[error("node {node}: {field} address {address:?} is not host:port")]
    BadAddress {
        node: NodeId,
        field: &'static str,
        address: String,
    },
    #[error("owners lists {given} partitions but partitions = {partitions}")]
    Owners { given: usize, partitions: u32 },
    #[error(transparent)]
    Map(#[from] MapError),
    #[error("no cluster secret: set `secret` or `secret_file`, or the {SECRET_ENV} environment variable")]
    NoSecret,
    #[error("set only one of `secret` and `secret_file`")]
    TwoSecrets,
    #[error("cannot read the secret file {path}: {source}")]
    SecretFile { path: String, source: io::Error },
    #[error(
        "the cluster secret is {len} bytes; use at least {SECRET_LEN_MIN} (a long random string)"
    )]
    WeakSecret { len: usize },
    #[error(
        "node {0} owns no partition: every node of a cluster file must own one \
         (a node joins without partitions only through `wallet cluster add-node`)"
    )]
    IdleNode(NodeId),
    #[error("node {id} is not in the cluster file (it lists {known:?})")]
    UnknownNode { id: NodeId, known: Vec<NodeId> },
    #[error(
        "replicas = {given}: a cluster of {nodes} nodes keeps 1 to {nodes} copies of each \
         partition, each on a distinct node"
    )]
    Replicas { given: u32, nodes: usize },
}

impl ClusterConfig {
    /// Reads and checks the cluster file at `path`; the secret may come from
    /// [`SECRET_ENV`].
    pub fn load(path: &Path) -> Result<ClusterConfig, ClusterConfigError> {
        let text = fs::read_to_string(path).map_err(|source| ClusterConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let env_secret = std::env::var(SECRET_ENV).ok();
        let base = path.parent().unwrap_or(Path::new("."));
        ClusterConfig::parse(&text, &path.display().to_string(), base, env_secret)
    }

    /// Parses and checks a cluster file's `text`. `name` names it in errors, `base` is where a
    /// relative `secret_file` is found, and a non-empty `env_secret` overrides the file's.
    pub fn parse(
        text: &str,
        name: &str,
        base: &Path,
        env_secret: Option<String>,
    ) -> Result<ClusterConfig, ClusterConfigError> {
        let file: ClusterFile = toml::from_str(text).map_err(|e| ClusterConfigError::Parse {
            path: name.to_string(),
            message: e.to_string(),
        })?;
        let map = partition_map(&file)?;
        let replicas = replicas(&file, &map)?;
        let secret = secret(&file, base, env_secret)?;
        let tls = file.tls.map(|TlsSection { ca, cert, key }| TlsPaths {
            base: base.to_path_buf(),
            ca,
            cert,
            key,
        });
        Ok(ClusterConfig {
            map,
            replicas,
            secret,
            tls,
        })
    }

    /// The partition map and replica count of the cluster file at `path` alone (no secret,
    /// no TLS files read): what `wallet cluster init` stores in etcd.
    pub fn load_map(path: &Path) -> Result<MapFile, ClusterConfigError> {
        let text = fs::read_to_string(path).map_err(|source| ClusterConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let file: ClusterFile = toml::from_str(&text).map_err(|e| ClusterConfigError::Parse {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        let map = partition_map(&file)?;
        Ok(MapFile {
            replicas: replicas(&file, &map)?,
            map,
            has_tls: file.tls.is_some(),
        })
    }

    /// The address entry of node `id`, or an error listing the nodes there are.
    pub fn node(&self, id: NodeId) -> Result<&NodeAddress, ClusterConfigError> {
        self.map
            .nodes
            .get(&id)
            .ok_or_else(|| ClusterConfigError::UnknownNode {
                id,
                known: self.map.nodes.keys().copied().collect(),
            })
    }
}

fn partition_map(file: &ClusterFile) -> Result<PartitionMap, ClusterConfigError> {
    if file.map_version == 0 {
        return Err(ClusterConfigError::MapVersion);
    }
    if file.partitions == 0 || file.partitions > PARTITIONS_MAX {
        return Err(ClusterConfigError::Partitions(file.partitions));
    }
    if file.nodes.is_empty() {
        return Err(ClusterConfigError::NoNodes);
    }
    if file.nodes.len() > NODES_MAX {
        return Err(ClusterConfigError::TooManyNodes(file.nodes.len()));
    }
    let mut nodes = BTreeMap::new();
    for entry in &file.nodes {
        let address = node_address(&entry.http, &entry.peer).map_err(|(field, address)| {
            ClusterConfigError::BadAddress {
                node: entry.id,
                field,
                address,
            }
        })?;
        if nodes.insert(entry.id, address).is_some() {
            return Err(ClusterConfigError::DuplicateNode(entry.id));
        }
    }
    let owners = match &file.owners {
        Some(owners) if owners.len() != file.partitions as usize => {
            return Err(ClusterConfigError::Owners {
                given: owners.len(),
                partitions: file.partitions,
            })
        }
        Some(owners) => owners.clone(),
        None => even_spread(file.partitions, &nodes.keys().copied().collect::<Vec<_>>()),
    };
    let map = PartitionMap {
        version: file.map_version,
        owners,
        nodes,
    };
    map.validate()?;
    // A static map never changes while nodes run, so a node listed without partitions
    // would only ever be a mistake in the file.
    if let Some(idle) = map
        .nodes
        .keys()
        .find(|id| map.partitions_of(**id).is_empty())
    {
        return Err(ClusterConfigError::IdleNode(*idle));
    }
    Ok(map)
}

/// What [`ClusterConfig::load_map`] reads of a cluster file.
#[derive(Debug, Clone)]
pub struct MapFile {
    pub map: PartitionMap,
    /// Copies of each partition (the file's `replicas`, or its default).
    pub replicas: u32,
    /// The file has a `[tls]` section, which a map in etcd does not carry.
    pub has_tls: bool,
}

/// The `replicas` of the file: 1 to the node count; by default 3 on three nodes or more
/// (a majority survives a lost node), 1 below (two copies would stop at either's loss).
fn replicas(file: &ClusterFile, map: &PartitionMap) -> Result<u32, ClusterConfigError> {
    let nodes = map.nodes.len();
    match file.replicas {
        None if nodes >= DEFAULT_REPLICAS as usize => Ok(DEFAULT_REPLICAS),
        None => Ok(1),
        Some(given) if (1..=nodes).contains(&(given as usize)) => Ok(given),
        Some(given) => Err(ClusterConfigError::Replicas { given, nodes }),
    }
}

/// Copies of each partition of a cluster of at least as many nodes, unless its file says.
pub const DEFAULT_REPLICAS: u32 = 3;

/// Partition `p` on the `(p mod n)`-th node in id order.
fn even_spread(partitions: u32, ids: &[NodeId]) -> Vec<NodeId> {
    assert!(!ids.is_empty());
    (0..partitions as usize)
        .map(|p| ids[p % ids.len()])
        .collect()
}

/// `host:port` with a non-empty host and a port number (`[v6]:port` included).
/// A node's addresses, each checked to be `host:port`; else the field (`http` or `peer`) and
/// the address that is not.
pub(crate) fn node_address(http: &str, peer: &str) -> Result<NodeAddress, (&'static str, String)> {
    for (field, address) in [("http", http), ("peer", peer)] {
        if !is_host_port(address) {
            return Err((field, address.to_string()));
        }
    }
    Ok(NodeAddress {
        http: http.to_string(),
        peer: peer.to_string(),
    })
}

pub(crate) fn is_host_port(address: &str) -> bool {
    match address.rsplit_once(':') {
        Some((host, port)) => {
            !host.is_empty() && !host.contains(char::is_whitespace) && port.parse::<u16>().is_ok()
        }
        None => false,
    }
}

/// The cluster secret of a node without a cluster file (its map comes from etcd): a
/// non-empty `env_secret` ([`SECRET_ENV`]), else the contents of `file`.
pub fn secret_without_file(
    env_secret: Option<String>,
    file: Option<&Path>,
) -> Result<Vec<u8>, ClusterConfigError> {
    let nothing = ClusterFile {
        map_version: 1,
        partitions: 1,
        owners: None,
        replicas: None,
        secret: None,
        secret_file: file.map(Path::to_path_buf),
        nodes: Vec::new(),
        tls: None,
    };
    secret(&nothing, Path::new("."), env_secret)
}

fn secret(
    file: &ClusterFile,
    base: &Path,
    env_secret: Option<String>,
) -> Result<Vec<u8>, ClusterConfigError> {
    let secret = match (
        env_secret.filter(|s| !s.is_empty()),
        &file.secret,
        &file.secret_file,
    ) {
        (Some(from_env), _, _) => from_env.into_bytes(),
        (None, Some(_), Some(_)) => return Err(ClusterConfigError::TwoSecrets),
        (None, Some(inline), None) => inline.clone().into_bytes(),
        (None, None, Some(relative)) => {
            let path = base.join(relative);
            let bytes = fs::read(&path).map_err(|source| ClusterConfigError::SecretFile {
                path: path.display().to_string(),
                source,
            })?;
            // A trailing newline is an editor's, not part of the secret.
            let end = bytes.trim_ascii_end().len();
            bytes[..end].to_vec()
        }
        (None, None, None) => return Err(ClusterConfigError::NoSecret),
    };
    if secret.len() < SECRET_LEN_MIN {
        return Err(ClusterConfigError::WeakSecret { len: secret.len() });
    }
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    const THREE_NODES: &str = r#"
        map_version = 3
        partitions = 7
        secret = "sixteen bytes or more"

        [[nodes]]
        id = 0
        http = "127.0.0.1:8080"
        peer = "127.0.0.1:9080"

        [[nodes]]
        id = 5
        http = "127.0.0.1:8085"
        peer = "127.0.0.1:9085"

        [[nodes]]
        id = 2
        http = "node2.internal:8080"
        peer = "[::1]:9082"
    "#;

    fn parse(text: &str) -> Result<ClusterConfig, ClusterConfigError> {
        ClusterConfig::parse(text, "cluster.toml", Path::new("."), None)
    }

    #[test]
    fn parses_nodes_and_spreads_partitions_evenly_by_id() {
        let config = parse(THREE_NODES).unwrap();
        assert_eq!(config.map.version, 3);
        assert_eq!(config.map.owners, vec![0, 2, 5, 0, 2, 5, 0]);
        assert_eq!(config.map.partitions_of(5), vec![2, 5]);
        assert_eq!(config.node(2).unwrap().peer, "[::1]:9082");
        assert_eq!(config.secret, b"sixteen bytes or more");
        assert!(
            !format!("{config:?}").contains("sixteen"),
            "the secret is never printed"
        );
        let error = config.node(1).unwrap_err().to_string();
        assert!(error.contains("[0, 2, 5]"), "{error}");
    }

    #[test]
    fn replicas_are_three_by_default_on_three_nodes_and_at_most_the_node_count() {
        assert_eq!(parse(THREE_NODES).unwrap().replicas, 3);
        let with =
            |line: &str| THREE_NODES.replace("partitions = 7", &format!("partitions = 7\n{line}"));
        for given in 1..=3 {
            let parsed = parse(&with(&format!("replicas = {given}"))).unwrap();
            assert_eq!(parsed.replicas, given);
        }
        for refused in ["replicas = 0", "replicas = 4"] {
            let error = parse(&with(refused)).unwrap_err().to_string();
            assert!(
                error.contains("3 nodes keeps 1 to 3 copies"),
                "{refused}: {error}"
            );
        }
        let two_nodes = "map_version = 1\npartitions = 2\nsecret = \"sixteen bytes or more\"\n\
                         [[nodes]]\nid = 0\nhttp = \"127.0.0.1:1\"\npeer = \"127.0.0.1:2\"\n\
                         [[nodes]]\nid = 1\nhttp = \"127.0.0.1:3\"\npeer = \"127.0.0.1:4\"\n";
        assert_eq!(parse(two_nodes).unwrap().replicas, 1);
    }

    #[test]
    fn explicit_owners_are_checked() {
        let text = THREE_NODES.replace("partitions = 7", "partitions = 3\nowners = [5, 5, 0]");
        let error = parse(&text).unwrap_err();
        assert!(matches!(error, ClusterConfigError::IdleNode(2)), "{error}");
        let text = THREE_NODES.replace("partitions = 7", "partitions = 3\nowners = [5, 2, 0]");
        assert_eq!(parse(&text).unwrap().map.owners, vec![5, 2, 0]);
        let text = THREE_NODES.replace("partitions = 7", "partitions = 3\nowners = [5, 2]");
        assert!(matches!(
            parse(&text),
            Err(ClusterConfigError::Owners {
                given: 2,
                partitions: 3
            })
        ));
        let text = THREE_NODES.replace("partitions = 7", "partitions = 3\nowners = [5, 2, 9]");
        assert!(matches!(
            parse(&text),
            Err(ClusterConfigError::Map(MapError::UnknownOwner {
                node: 9,
                ..
            }))
        ));
    }

    #[test]
    fn bad_files_get_errors_that_name_the_problem() {
        let cases: [(String, &str); 10] = [
            (
                THREE_NODES.replace("map_version = 3", "map_version = 0"),
                "map_version",
            ),
            (
                THREE_NODES.replace("partitions = 7", "partitions = 0"),
                "partitions must",
            ),
            (
                THREE_NODES.replace("id = 5", "id = 0"),
                "node id 0 is listed twice",
            ),
            (
                THREE_NODES.replace("127.0.0.1:8085", "127.0.0.1"),
                "not host:port",
            ),
            (
                THREE_NODES.replace("127.0.0.1:9085", "127.0.0.1:8080"),
                "share the address",
            ),
            (
                THREE_NODES.replace("sixteen bytes or more", "short"),
                "at least 16",
            ),
            (
                THREE_NODES.replace("secret =", "colour = \"blue\"\nsecret ="),
                "unknown field",
            ),
            (
                THREE_NODES.replace("map_version = 3", "map_version = \"x\""),
                "map_version",
            ),
            (
                THREE_NODES.replace("secret = \"sixteen bytes or more\"", ""),
                "WALLET_CLUSTER_SECRET",
            ),
            (
                "map_version = 1\npartitions = 2\nsecret = \"sixteen bytes or more\"".into(),
                "no [[nodes]]",
            ),
        ];
        for (text, expected) in cases {
            let error = parse(&text).unwrap_err().to_string();
            assert!(error.contains(expected), "{expected:?} not in {error:?}");
        }
    }

    #[test]
    fn the_secret_comes_from_the_environment_a_file_or_the_cluster_file() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("secret"), "from a file, 16+ bytes\n").unwrap();
        let with_file = THREE_NODES.replace(
            "secret = \"sixteen bytes or more\"",
            "secret_file = \"secret\"",
        );
        let config = ClusterConfig::parse(&with_file, "c", dir.path(), None).unwrap();
        assert_eq!(config.secret, b"from a file, 16+ bytes");
        let env = Some("from the environment!".to_string());
        let config = ClusterConfig::parse(&with_file, "c", dir.path(), env).unwrap();
        assert_eq!(config.secret, b"from the environment!");
        let empty_env = Some(String::new());
        let config = ClusterConfig::parse(THREE_NODES, "c", dir.path(), empty_env).unwrap();
        assert_eq!(config.secret, b"sixteen bytes or more");
        let both = with_file.replace(
            "secret_file",
            "secret = \"sixteen bytes or more\"\nsecret_file",
        );
        assert!(matches!(parse(&both), Err(ClusterConfigError::TwoSecrets)));
        let missing = ClusterConfig::parse(&with_file, "c", Path::new("/nonexistent"), None);
        assert!(matches!(
            missing,
            Err(ClusterConfigError::SecretFile { .. })
        ));
    }

    #[test]
    fn tls_paths_are_relative_to_the_file_and_name_each_node() {
        assert_eq!(parse(THREE_NODES).unwrap().tls, None);
        let with_tls = format!(
            "{THREE_NODES}\n[tls]\nca = \"pki/ca.pem\"\ncert = \"pki/node-{{id}}.pem\"\nkey = \"/keys/{{id}}.key\"\n"
        );
        let config = ClusterConfig::parse(&with_tls, "c", Path::new("/etc/walletd"), None).unwrap();
        let files = config.tls.expect("a [tls] section").for_node(5);
        assert_eq!(files.ca, Path::new("/etc/walletd/pki/ca.pem"));
        assert_eq!(files.cert, Path::new("/etc/walletd/pki/node-5.pem"));
        assert_eq!(files.key, Path::new("/keys/5.key"));
        let incomplete = format!("{THREE_NODES}\n[tls]\nca = \"ca.pem\"\ncert = \"node.pem\"\n");
        let error = parse(&incomplete).unwrap_err().to_string();
        assert!(error.contains("missing field `key`"), "{error}");
        let unknown = format!("{with_tls}certificate = \"x\"\n");
        let error = parse(&unknown).unwrap_err().to_string();
        assert!(error.contains("unknown field `certificate`"), "{error}");
    }

    #[test]
    fn the_example_at_the_repository_root_parses() {
        let text = include_str!("../../cluster.example.toml");
        let config = parse(text).unwrap();
        assert_eq!(config.map.nodes.len(), 3);
        for node in config.map.nodes.keys() {
            assert!(!config.map.partitions_of(*node).is_empty());
        }
    }
}
