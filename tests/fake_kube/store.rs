//! The fake's storage, without any I/O: the objects of every kind keyed by
//! `namespace/name`, one global resourceVersion counter (etcd's revision: every write of
//! any kind bumps it), and the history of events that watches replay and snapshot reads
//! undo. Both the HTTP layer and the tests' control handle write through here, so a change
//! made by a test and one made by a client look the same on the wire.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::Kind;

/// What happened to an object at one resourceVersion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One write. `object` is the state after it (for a deletion: the last state, carrying the
/// deletion's resourceVersion, as the API server sends it); `prev` the state before, which
/// watches with selectors need (an object leaving a selector is a DELETED for them) and
/// snapshot reads use to step back in time.
#[derive(Clone, Debug)]
pub(crate) struct Event {
    pub rv: u64,
    pub kind: Kind,
    pub key: String,
    pub ty: EventType,
    pub object: Value,
    pub prev: Option<Value>,
}

/// A read at a resourceVersion the history no longer reaches (it was compacted away).
#[derive(Debug)]
pub(crate) struct Compacted {
    /// The oldest resourceVersion still readable.
    pub oldest: u64,
}

pub(crate) struct Store {
    rv: u64,
    /// The history holds every event with `rv > compacted`: reads and watch resumes at
    /// `compacted` or later are served, older ones are "too old" (410 Expired).
    compacted: u64,
    objects: BTreeMap<Kind, BTreeMap<String, Value>>,
    history: Vec<Event>,
}

/// The store key of an object: etcd orders keys as strings, so lists come back sorted by
/// `namespace/name` byte-wise, as the API server returns them.
pub(crate) fn key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

impl Store {
    /// Starts at a resourceVersion that looks like a real cluster's rather than 0 or 1,
    /// which have special meanings in list and watch requests.
    pub(crate) fn new() -> Store {
        const FIRST_RV: u64 = 1000;
        Store {
            rv: FIRST_RV,
            compacted: FIRST_RV,
            objects: BTreeMap::new(),
            history: Vec::new(),
        }
    }

    pub(crate) fn resource_version(&self) -> u64 {
        self.rv
    }

    pub(crate) fn oldest_readable(&self) -> u64 {
        self.compacted
    }

    pub(crate) fn get(&self, kind: Kind, namespace: &str, name: &str) -> Option<&Value> {
        self.objects.get(&kind)?.get(&key(namespace, name))
    }

    /// Every object of `kind`, current state.
    pub(crate) fn all(&self, kind: Kind) -> impl Iterator<Item = (&String, &Value)> {
        self.objects.get(&kind).into_iter().flatten()
    }

    /// Creates or replaces `obj` (which must carry metadata.namespace and metadata.name),
    /// stamping what the API server owns: uid and creationTimestamp on creation (kept on
    /// updates), generation for kinds that have one, and a new resourceVersion. A
    /// creationTimestamp already in `obj` is kept when `keep_created` (tests model age).
    pub(crate) fn put(&mut self, kind: Kind, mut obj: Value, keep_created: bool) -> Value {
        let (namespace, name) = namespace_and_name(&obj);
        let key = key(&namespace, &name);
        let prev = self.objects.get(&kind).and_then(|m| m.get(&key)).cloned();
        let meta = metadata_mut(&mut obj);
        match &prev {
            None => {
                meta.insert("uid".into(), Value::String(new_uid()));
                if !(keep_created && meta.contains_key("creationTimestamp")) {
                    meta.insert("creationTimestamp".into(), Value::String(now_rfc3339()));
                }
                if kind.has_generation() {
                    meta.insert("generation".into(), Value::from(1));
                } else {
                    meta.remove("generation");
                }
            }
            Some(old) => {
                for owned in ["uid", "creationTimestamp", "resourceVersion"] {
                    match old["metadata"].get(owned) {
                        Some(v) => meta.insert(owned.into(), v.clone()),
                        None => meta.remove(owned),
                    };
                }
                if kind.has_generation() {
                    let generation = old["metadata"]["generation"].as_i64().unwrap_or(1);
                    let bump = i64::from(spec_changed(old, &obj));
                    metadata_mut(&mut obj).insert("generation".into(), (generation + bump).into());
                } else {
                    metadata_mut(&mut obj).remove("generation");
                }
                // An update that changes nothing is not a write: etcd keeps the revision
                // and watches hear nothing.
                if &obj == old {
                    return obj;
                }
            }
        }
        self.rv += 1;
        let rv = self.rv;
        metadata_mut(&mut obj).insert("resourceVersion".into(), Value::String(rv.to_string()));
        self.objects
            .entry(kind)
            .or_default()
            .insert(key.clone(), obj.clone());
        self.history.push(Event {
            rv,
            kind,
            key,
            ty: if prev.is_some() {
                EventType::Modified
            } else {
                EventType::Added
            },
            object: obj.clone(),
            prev,
        });
        obj
    }

    /// Deletes an object; returns its last state with the deletion's resourceVersion.
    pub(crate) fn remove(&mut self, kind: Kind, namespace: &str, name: &str) -> Option<Value> {
        let key = key(namespace, name);
        let old = self.objects.get_mut(&kind)?.remove(&key)?;
        self.rv += 1;
        let mut last = old.clone();
        metadata_mut(&mut last)
            .insert("resourceVersion".into(), Value::String(self.rv.to_string()));
        self.history.push(Event {
            rv: self.rv,
            kind,
            key,
            ty: EventType::Deleted,
            object: last.clone(),
            prev: Some(old),
        });
        Some(last)
    }

    /// The events after resourceVersion `after`, oldest first, or `Compacted` if the
    /// history no longer reaches back that far.
    pub(crate) fn events_after(&self, after: u64) -> Result<&[Event], Compacted> {
        if after < self.compacted {
            return Err(Compacted {
                oldest: self.compacted,
            });
        }
        let start = self.history.partition_point(|e| e.rv <= after);
        Ok(&self.history[start..])
    }

    /// The objects of `kind` as they were at resourceVersion `at` (a consistent snapshot,
    /// like etcd's read at a revision), by undoing the newer events on a copy of now.
    pub(crate) fn snapshot(
        &self,
        kind: Kind,
        at: u64,
    ) -> Result<BTreeMap<String, Value>, Compacted> {
        let newer = self.events_after(at)?;
        let mut objects = self.objects.get(&kind).cloned().unwrap_or_default();
        for event in newer.iter().rev().filter(|e| e.kind == kind) {
            match &event.prev {
                Some(prev) => objects.insert(event.key.clone(), prev.clone()),
                None => objects.remove(&event.key),
            };
        }
        Ok(objects)
    }

    /// Forgets the history, as etcd compaction (or an API server restart with a fresh watch
    /// cache) does: watches resuming from, and continue tokens taken at, an older
    /// resourceVersion now get 410 Expired.
    pub(crate) fn compact(&mut self) {
        self.history.clear();
        self.compacted = self.rv;
    }
}

/// (metadata.namespace, metadata.name) of an object the caller has checked.
pub(crate) fn namespace_and_name(obj: &Value) -> (String, String) {
    let meta = &obj["metadata"];
    (
        meta["namespace"].as_str().unwrap_or_default().to_owned(),
        meta["name"].as_str().unwrap_or_default().to_owned(),
    )
}

/// The object's metadata map, created if missing.
pub(crate) fn metadata_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.is_object() {
        *obj = Value::Object(Map::new());
    }
    let map = obj.as_object_mut().expect("made an object above");
    let meta = map
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    if !meta.is_object() {
        *meta = Value::Object(Map::new());
    }
    meta.as_object_mut().expect("made an object above")
}

/// Whether anything but metadata and status differs: the API server bumps
/// metadata.generation only for such (spec) changes.
fn spec_changed(old: &Value, new: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(m) = v.as_object_mut() {
            m.remove("metadata");
            m.remove("status");
        }
        v
    };
    strip(old) != strip(new)
}

/// A random version-4 UUID, the shape of metadata.uid.
pub(crate) fn new_uid() -> String {
    let b = random_bytes::<16>();
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
        u16::from_be_bytes([b[4], b[5]]),
        u16::from_be_bytes([b[6], b[7]]) & 0x0fff,
        (u16::from_be_bytes([b[8], b[9]]) & 0x3fff) | 0x8000,
        u64::from_be_bytes([0, 0, b[10], b[11], b[12], b[13], b[14], b[15]]),
    )
}

/// The 5-character suffix the API server appends to metadata.generateName (its alphabet
/// leaves out vowels and look-alike characters).
pub(crate) fn name_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    random_bytes::<5>()
        .iter()
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect()
}

fn random_bytes<const N: usize>() -> [u8; N] {
    use ring::rand::{SecureRandom, SystemRandom};
    let mut bytes = [0u8; N];
    // The system RNG only fails if the OS cannot provide randomness; ids then stay
    // zero, which is still well-formed.
    let _ = SystemRandom::new().fill(&mut bytes);
    bytes
}

/// Now as the API server writes metav1.Time: RFC 3339, UTC, whole seconds.
pub(crate) fn now_rfc3339() -> String {
    let t = time::OffsetDateTime::now_utc();
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}
