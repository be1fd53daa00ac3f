//! What this node knows of the mesh: every node's latest published state,
//! the graph it implies, routes over it, and which floods it has seen.
//!
//! Pure data, no sockets: the link tasks feed it records and ask it where to
//! send things. Each node publishes its own links, accounts and presence as
//! versioned records; a record replaces an older one of the same node and
//! kind, so any two nodes that have exchanged records agree, whatever order
//! they arrived in. That is what makes a healed partition converge.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use super::frame::{Facts, Kind, NodeState, Speech};

/// Most nodes whose records are kept; records of further nodes are dropped.
pub const MAX_NODES: usize = 1024;
/// How far behind the newest sequence number a flooded message may arrive
/// and still be recognised; older ones are treated as seen.
const SEEN_WINDOW: u64 = 4096;

/// Everything known of the mesh.
#[derive(Debug)]
pub struct MeshState {
    me: String,
    /// The shared store this node runs on, if any (see [`MeshState::is_sibling`]).
    my_store: Option<String>,
    records: BTreeMap<(String, Kind), NodeState>,
    /// Node → first hop, for every node reachable from here.
    routes: HashMap<String, String>,
    /// Name key → the other nodes' accounts by that name: (node, name,
    /// created_ms). Every send to a user looks here, so it is an index,
    /// not a scan of the records.
    claims: HashMap<String, Vec<(String, String, i64)>>,
    seen: HashMap<String, SeenWindow>,
    /// Nodes that stopped being reachable, and when: a question to every
    /// node names them as not answering for a while, not as never there.
    lost: HashMap<String, Instant>,
}

/// Which sequence numbers of one origin instance were seen, over a window.
#[derive(Debug)]
struct SeenWindow {
    instance: u64,
    newest: u64,
    recent: BTreeSet<u64>,
}

/// The outcome of offering a record.
#[derive(Debug, PartialEq, Eq)]
pub enum Offer {
    /// Newer than what was known: keep and pass it on.
    Accepted,
    /// Already known, or older: drop it.
    Stale,
    /// A record about this very node that this node did not publish.
    Forged,
    /// No room for another node.
    Full,
}

impl MeshState {
    pub fn new(me: &str, my_store: Option<String>) -> Self {
        MeshState {
            me: me.to_owned(),
            my_store,
            records: BTreeMap::new(),
            routes: HashMap::new(),
            claims: HashMap::new(),
            seen: HashMap::new(),
            lost: HashMap::new(),
        }
    }

    /// Takes a record if it is newer than the one held for its node and kind.
    pub fn offer(&mut self, record: NodeState) -> Offer {
        if record.node == self.me {
            return Offer::Forged;
        }
        self.put(record)
    }

    /// Stores this node's own record.
    pub fn publish(&mut self, record: NodeState) {
        self.put(record);
    }

    fn put(&mut self, record: NodeState) -> Offer {
        let key = (record.node.clone(), record.facts.kind());
        if let Some(held) = self.records.get(&key) {
            if (record.instance, record.version) <= (held.instance, held.version) {
                return Offer::Stale;
            }
        } else if !self.knows(&record.node) && self.node_count() >= MAX_NODES {
            return Offer::Full;
        }
        let kind = key.1;
        let node = record.node.clone();
        if let Some(old) = self.records.insert(key, record)
            && kind == Kind::Accounts
        {
            self.unindex(&old);
        }
        match kind {
            Kind::Links => self.recompute_routes(),
            Kind::Accounts if node != self.me => self.index(&node),
            _ => {}
        }
        Offer::Accepted
    }

    fn index(&mut self, node: &str) {
        let Some(NodeState {
            facts: Facts::Accounts { accounts },
            ..
        }) = self.records.get(&(node.to_owned(), Kind::Accounts))
        else {
            return;
        };
        for (name, created) in accounts {
            self.claims
                .entry(name.to_ascii_lowercase())
                .or_default()
                .push((node.to_owned(), name.clone(), *created));
        }
    }

    fn unindex(&mut self, old: &NodeState) {
        let Facts::Accounts { accounts } = &old.facts else {
            return;
        };
        for (name, _) in accounts {
            let key = name.to_ascii_lowercase();
            if let Some(list) = self.claims.get_mut(&key) {
                list.retain(|(n, _, _)| *n != old.node);
                if list.is_empty() {
                    self.claims.remove(&key);
                }
            }
        }
    }

    fn knows(&self, node: &str) -> bool {
        self.records
            .range((node.to_owned(), Kind::Links)..=(node.to_owned(), Kind::Presence))
            .next()
            .is_some()
    }

    fn node_count(&self) -> usize {
        self.records
            .keys()
            .map(|(n, _)| n)
            .collect::<BTreeSet<_>>()
            .len()
    }

    /// Every record held, to hand a newly linked peer.
    pub fn records(&self) -> impl Iterator<Item = &NodeState> {
        self.records.values()
    }

    fn peers_of(&self, node: &str) -> &[String] {
        match self.records.get(&(node.to_owned(), Kind::Links)) {
            Some(NodeState {
                facts: Facts::Links { peers, .. },
                ..
            }) => peers,
            _ => &[],
        }
    }

    /// Whether `node` runs on the same shared store as this node: its
    /// accounts are this node's accounts, its messages already stored here.
    pub fn is_sibling(&self, node: &str) -> bool {
        let Some(mine) = &self.my_store else {
            return false;
        };
        matches!(
            self.records.get(&(node.to_owned(), Kind::Links)),
            Some(NodeState { facts: Facts::Links { store: Some(theirs), .. }, .. }) if theirs == mine
        )
    }

    /// The siblings (see [`MeshState::is_sibling`]) reachable now, sorted.
    pub fn siblings(&self) -> Vec<String> {
        let mut nodes: Vec<String> = self
            .routes
            .keys()
            .filter(|n| self.is_sibling(n))
            .cloned()
            .collect();
        nodes.sort();
        nodes
    }

    /// Name keys of the accounts online on reachable siblings.
    pub fn sibling_online(&self) -> BTreeSet<String> {
        let mut online = BTreeSet::new();
        for node in self.siblings() {
            if let Some(NodeState {
                facts: Facts::Presence { online: names },
                ..
            }) = self.records.get(&(node, Kind::Presence))
            {
                online.extend(names.iter().map(|n| n.to_ascii_lowercase()));
            }
        }
        online
    }

    /// A link counts only when both ends list it: a node that died leaves
    /// its last record behind, but its neighbours stop listing it.
    pub fn links(&self) -> Vec<(String, String)> {
        let mut links = Vec::new();
        for (node, kind) in self.records.keys() {
            if *kind != Kind::Links {
                continue;
            }
            for peer in self.peers_of(node) {
                if node < peer && self.peers_of(peer).contains(node) {
                    links.push((node.clone(), peer.clone()));
                }
            }
        }
        links
    }

    fn recompute_routes(&mut self) {
        let mut routes = HashMap::new();
        let mut queue = VecDeque::new();
        for peer in self.peers_of(&self.me) {
            if self.peers_of(peer).contains(&self.me) && !routes.contains_key(peer) {
                routes.insert(peer.clone(), peer.clone());
                queue.push_back(peer.clone());
            }
        }
        while let Some(node) = queue.pop_front() {
            let first = routes[&node].clone();
            for next in self.peers_of(&node) {
                if *next == self.me || routes.contains_key(next) {
                    continue;
                }
                if self.peers_of(next).contains(&node) {
                    routes.insert(next.clone(), first.clone());
                    queue.push_back(next.clone());
                }
            }
        }
        let now = Instant::now();
        for gone in self.routes.keys().filter(|n| !routes.contains_key(*n)) {
            self.lost.insert(gone.clone(), now);
        }
        self.lost.retain(|node, _| !routes.contains_key(node));
        self.routes = routes;
    }

    /// Nodes that were reachable within `within` and are not now, sorted.
    pub fn recently_lost(&self, within: Duration) -> Vec<String> {
        let mut nodes: Vec<String> = self
            .lost
            .iter()
            .filter(|(_, when)| when.elapsed() <= within)
            .map(|(node, _)| node.clone())
            .collect();
        nodes.sort();
        nodes
    }

    /// The peer to hand a message for `node` to, if `node` can be reached.
    pub fn next_hop(&self, node: &str) -> Option<&str> {
        self.routes.get(node).map(String::as_str)
    }

    /// Every other node reachable now, sorted.
    pub fn reachable(&self) -> Vec<String> {
        let mut nodes: Vec<String> = self.routes.keys().cloned().collect();
        nodes.sort();
        nodes
    }

    pub fn is_reachable(&self, node: &str) -> bool {
        self.routes.contains_key(node)
    }

    /// Every node with a record, and this one, sorted.
    pub fn nodes(&self) -> Vec<String> {
        let mut nodes: BTreeSet<String> = self.records.keys().map(|(n, _)| n.clone()).collect();
        nodes.insert(self.me.clone());
        nodes.into_iter().collect()
    }

    /// The instance a node's records come from.
    pub fn instance_of(&self, node: &str) -> Option<u64> {
        self.records
            .range((node.to_owned(), Kind::Links)..=(node.to_owned(), Kind::Presence))
            .map(|(_, r)| r.instance)
            .max()
    }

    /// Claims on a name (by key) from other nodes: (node, name, created_ms).
    /// A sibling's accounts are this node's own, so they claim nothing.
    pub fn claims(&self, key: &str) -> Vec<(String, String, i64)> {
        let mut claims = self
            .claims
            .get(&key.to_ascii_lowercase())
            .cloned()
            .unwrap_or_default();
        claims.retain(|(node, _, _)| !self.is_sibling(node));
        claims
    }

    /// Accounts of other nodes: (node, name, online now).
    pub fn remote_accounts(&self) -> Vec<(String, String, bool)> {
        let mut users = Vec::new();
        for ((node, kind), record) in &self.records {
            if *kind != Kind::Accounts || *node == self.me || self.is_sibling(node) {
                continue;
            }
            let reachable = self.is_reachable(node);
            let online: BTreeSet<String> = match self.records.get(&(node.clone(), Kind::Presence)) {
                Some(NodeState {
                    facts: Facts::Presence { online },
                    ..
                }) if reachable => online.iter().map(|n| n.to_ascii_lowercase()).collect(),
                _ => BTreeSet::new(),
            };
            if let Facts::Accounts { accounts } = &record.facts {
                for (name, _) in accounts {
                    let on = online.contains(&name.to_ascii_lowercase());
                    users.push((node.clone(), name.clone(), on));
                }
            }
        }
        users
    }

    /// Whether a flooded message is new; remembers it if so.
    pub fn first_sight(&mut self, speech: &Speech) -> bool {
        if speech.origin == self.me {
            return false;
        }
        if !self.seen.contains_key(&speech.origin) && self.seen.len() >= MAX_NODES {
            return false;
        }
        let window = self
            .seen
            .entry(speech.origin.clone())
            .or_insert(SeenWindow {
                instance: speech.instance,
                newest: 0,
                recent: BTreeSet::new(),
            });
        if speech.instance < window.instance {
            return false;
        }
        if speech.instance > window.instance {
            *window = SeenWindow {
                instance: speech.instance,
                newest: 0,
                recent: BTreeSet::new(),
            };
        }
        if speech.seq.saturating_add(SEEN_WINDOW) <= window.newest
            || !window.recent.insert(speech.seq)
        {
            return false;
        }
        window.newest = window.newest.max(speech.seq);
        let floor = window.newest.saturating_sub(SEEN_WINDOW);
        while window.recent.first().is_some_and(|&s| s <= floor) {
            window.recent.pop_first();
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn links(node: &str, instance: u64, version: u64, peers: &[&str]) -> NodeState {
        NodeState {
            node: node.into(),
            instance,
            version,
            facts: Facts::Links {
                peers: peers.iter().map(|p| p.to_string()).collect(),
                store: None,
            },
        }
    }

    fn speech(origin: &str, instance: u64, seq: u64) -> Speech {
        Speech {
            origin: origin.into(),
            instance,
            seq,
            room: "lobby".into(),
            from: "x".into(),
            body: "y".into(),
            sent_ms: 0,
            stored: None,
        }
    }

    /// A ring a-b-c-d-a seen from a.
    fn ring() -> MeshState {
        let mut s = MeshState::new("a", None);
        s.publish(links("a", 1, 1, &["b", "d"]));
        assert_eq!(s.offer(links("b", 1, 1, &["a", "c"])), Offer::Accepted);
        assert_eq!(s.offer(links("c", 1, 1, &["b", "d"])), Offer::Accepted);
        assert_eq!(s.offer(links("d", 1, 1, &["c", "a"])), Offer::Accepted);
        s
    }

    #[test]
    fn routes_follow_shortest_paths() {
        let s = ring();
        assert_eq!(s.next_hop("b"), Some("b"));
        assert_eq!(s.next_hop("d"), Some("d"));
        assert!(matches!(s.next_hop("c"), Some("b") | Some("d")));
        assert_eq!(s.reachable(), vec!["b", "c", "d"]);
        assert_eq!(s.links().len(), 4);
    }

    #[test]
    fn a_dead_node_drops_out_when_its_neighbours_stop_listing_it() {
        let mut s = ring();
        // b died: its own record stays, but c and a no longer list it.
        s.publish(links("a", 1, 2, &["d"]));
        s.offer(links("c", 1, 2, &["d"]));
        assert_eq!(s.next_hop("c"), Some("d"));
        assert!(!s.is_reachable("b"));
        assert_eq!(s.links().len(), 2);
    }

    #[test]
    fn older_and_repeated_records_are_stale_and_restarts_supersede() {
        let mut s = ring();
        assert_eq!(s.offer(links("b", 1, 1, &[])), Offer::Stale);
        assert_eq!(s.offer(links("b", 1, 0, &[])), Offer::Stale);
        assert_eq!(s.offer(links("b", 2, 0, &["a"])), Offer::Accepted);
        assert_eq!(s.offer(links("a", 9, 9, &[])), Offer::Forged);
        assert_eq!(s.instance_of("b"), Some(2));
    }

    fn accounts(node: &str, version: u64, names: &[&str]) -> NodeState {
        NodeState {
            node: node.into(),
            instance: 1,
            version,
            facts: Facts::Accounts {
                accounts: names.iter().map(|n| (n.to_string(), 7)).collect(),
            },
        }
    }

    #[test]
    fn claims_follow_the_newest_accounts_record_of_each_node() {
        let mut s = MeshState::new("a", None);
        s.offer(accounts("b", 1, &["Bob", "cat"]));
        s.offer(accounts("c", 1, &["bob"]));
        let mut bobs = s.claims("BOB");
        bobs.sort();
        assert_eq!(
            bobs,
            [("b".into(), "Bob".into(), 7), ("c".into(), "bob".into(), 7)]
        );
        // b deletes Bob: its newer record replaces the older one.
        s.offer(accounts("b", 2, &["cat"]));
        assert_eq!(s.claims("bob"), [("c".into(), "bob".into(), 7)]);
        assert_eq!(s.claims("cat").len(), 1);
        assert!(s.claims("nobody").is_empty());
    }

    #[test]
    fn flooded_messages_are_seen_once_even_out_of_order() {
        let mut s = MeshState::new("a", None);
        assert!(s.first_sight(&speech("b", 1, 2)));
        assert!(s.first_sight(&speech("b", 1, 1)));
        assert!(!s.first_sight(&speech("b", 1, 2)));
        assert!(!s.first_sight(&speech("b", 1, 1)));
        assert!(!s.first_sight(&speech("a", 1, 3)), "own speech comes back");
        // A restart of b starts its sequence again.
        assert!(s.first_sight(&speech("b", 2, 1)));
        assert!(
            !s.first_sight(&speech("b", 1, 5)),
            "the old instance is gone"
        );
        // Far behind the window counts as seen, and memory stays bounded.
        for seq in 2..=SEEN_WINDOW * 3 {
            assert!(s.first_sight(&speech("b", 2, seq)));
        }
        assert!(!s.first_sight(&speech("b", 2, 5)));
        assert!(s.seen["b"].recent.len() <= SEEN_WINDOW as usize);
    }

    #[test]
    fn siblings_are_nodes_on_the_same_store_and_claim_no_names() {
        let record = |node: &str, version, facts| NodeState {
            node: String::from(node),
            instance: 1,
            version,
            facts,
        };
        let on = |node: &str, peers: &[&str], store: Option<&str>| {
            record(
                node,
                1,
                Facts::Links {
                    peers: peers.iter().map(|p| p.to_string()).collect(),
                    store: store.map(String::from),
                },
            )
        };
        let bob = |node: &str| {
            record(
                node,
                2,
                Facts::Accounts {
                    accounts: vec![("bob".into(), 5)],
                },
            )
        };
        let mut s = MeshState::new("a", Some("db1".into()));
        s.publish(on("a", &["b", "c", "d"], Some("db1")));
        s.offer(on("b", &["a"], Some("db1")));
        s.offer(on("c", &["a"], Some("db2")));
        s.offer(on("d", &["a"], None));
        for node in ["b", "c", "d"] {
            s.offer(bob(node));
        }
        assert!(s.is_sibling("b"));
        assert!(!s.is_sibling("c"), "another database");
        assert!(!s.is_sibling("d"), "a store of its own");
        assert_eq!(s.siblings(), ["b"]);
        let claims: Vec<String> = s.claims("bob").into_iter().map(|c| c.0).collect();
        assert_eq!(claims.len(), 2);
        assert!(!claims.contains(&"b".to_owned()));
        // A node on no shared store has no siblings, whatever others say.
        let mut lone = MeshState::new("a", None);
        lone.publish(on("a", &["b"], None));
        lone.offer(on("b", &["a"], None));
        assert!(!lone.is_sibling("b"));
    }
}
