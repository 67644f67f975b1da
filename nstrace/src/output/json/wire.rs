//! The JSON schema, written once: [`Wire`] is every line nstrace writes
//! (`start`, the records, `lost`, `stop`) as one flat object type. The sink
//! serializes it and `report` deserializes it, so the writer and the reader
//! cannot drift apart; record lines, the hot path, are written by
//! `json::fast` instead, which a property test holds byte-equal to this
//! type's serde output. Field order is the order written.
//!
//! A saved trace is untrusted input (anyone can hand one to `nstrace
//! report`), so every field is a [`Field`]: a value of the wrong type, out of
//! range or unknown reads as null instead of failing the line, the way a
//! reader of foreign JSON expects. Strings are borrowed from the line where
//! they have no escapes; nothing builds a `serde_json::Value` tree.

use std::{borrow::Cow, fmt, marker::PhantomData};

use serde::{
    Deserialize, Deserializer, Serialize, Serializer,
    de::{self, IgnoredAny, MapAccess, SeqAccess, Visitor, value::MapAccessDeserializer},
};

use crate::{
    model::{
        Actor, Birth, Container, EndCause, EndMethod, EventType, Loss, NsKind, Record, Start, Stop,
        Syscall,
    },
    sys::time::{parse_rfc3339, rfc3339},
    util::errno,
};

/// One field of a line: not written at all, written as `null`, or a value.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Field<T> {
    #[default]
    Absent,
    Null,
    Is(T),
}

impl<T> Field<T> {
    pub fn is_absent(&self) -> bool {
        matches!(self, Field::Absent)
    }

    /// Always written: `null` when `None`.
    fn null_or(v: Option<T>) -> Self {
        v.map_or(Field::Null, Field::Is)
    }

    /// Written only when `Some`.
    fn when(v: Option<T>) -> Self {
        v.map_or(Field::Absent, Field::Is)
    }

    pub fn get(self) -> Option<T> {
        match self {
            Field::Is(v) => Some(v),
            _ => None,
        }
    }
}

impl<T: Serialize> Serialize for Field<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Field::Is(v) => v.serialize(s),
            _ => s.serialize_none(),
        }
    }
}

/// How a type reads itself from whatever JSON value a field holds: `None`
/// for values it does not take (the field then reads as null). Maps and
/// arrays a type does not take are skipped over, never kept.
pub trait Lenient<'de>: Sized {
    fn from_u64(_: u64) -> Option<Self> {
        None
    }
    fn from_i64(_: i64) -> Option<Self> {
        None
    }
    fn from_bool(_: bool) -> Option<Self> {
        None
    }
    fn from_text(_: &str) -> Option<Self> {
        None
    }
    fn from_borrowed_text(v: &'de str) -> Option<Self> {
        Self::from_text(v)
    }
    fn from_map<A: MapAccess<'de>>(mut map: A) -> Result<Option<Self>, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(None)
    }
    fn from_seq<A: SeqAccess<'de>>(mut seq: A) -> Result<Option<Self>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(None)
    }
}

impl<'de, T: Lenient<'de>> Deserialize<'de> for Field<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(FieldVisitor(PhantomData))
    }
}

struct FieldVisitor<T>(PhantomData<T>);

impl<'de, T: Lenient<'de>> Visitor<'de> for FieldVisitor<T> {
    type Value = Field<T>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Field::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Field::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
        Ok(Field::null_or(T::from_bool(v)))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Field::null_or(T::from_u64(v)))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Field::null_or(T::from_i64(v)))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Field::Null)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Field::null_or(T::from_text(v)))
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Field::null_or(T::from_borrowed_text(v)))
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        Ok(Field::null_or(T::from_map(map)?))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        Ok(Field::null_or(T::from_seq(seq)?))
    }
}

impl Lenient<'_> for u32 {
    fn from_u64(v: u64) -> Option<Self> {
        v.try_into().ok()
    }
}

impl Lenient<'_> for u64 {
    fn from_u64(v: u64) -> Option<Self> {
        Some(v)
    }
}

impl Lenient<'_> for i32 {
    fn from_u64(v: u64) -> Option<Self> {
        v.try_into().ok()
    }
    fn from_i64(v: i64) -> Option<Self> {
        v.try_into().ok()
    }
}

impl Lenient<'_> for i64 {
    fn from_u64(v: u64) -> Option<Self> {
        v.try_into().ok()
    }
    fn from_i64(v: i64) -> Option<Self> {
        Some(v)
    }
}

impl Lenient<'_> for bool {
    fn from_bool(v: bool) -> Option<Self> {
        Some(v)
    }
}

impl<'de: 'a, 'a> Lenient<'de> for Cow<'a, str> {
    fn from_text(v: &str) -> Option<Self> {
        Some(Cow::Owned(v.to_string()))
    }
    fn from_borrowed_text(v: &'de str) -> Option<Self> {
        Some(Cow::Borrowed(v))
    }
}

/// The names nstrace writes for its enums, read back by name.
macro_rules! by_name {
    ($($t:ty),*) => {$(
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.name())
            }
        }
        impl Lenient<'_> for $t {
            fn from_text(v: &str) -> Option<Self> {
                <$t>::from_name(v)
            }
        }
    )*};
}
by_name!(NsKind, EventType, Syscall, EndCause, EndMethod);

/// Objects nested in a line read with their own lenient fields.
macro_rules! object {
    ($($t:ident),*) => {$(
        impl<'de: 'a, 'a> Lenient<'de> for $t<'a> {
            fn from_map<A: MapAccess<'de>>(map: A) -> Result<Option<Self>, A::Error> {
                $t::deserialize(MapAccessDeserializer::new(map)).map(Some)
            }
        }
    )*};
}
object!(WireContainer, WireBirth, WireAlive);

/// A time: RFC 3339 in UTC. Read back only if nstrace could have written
/// it: 1970 to 2262 (Unix nanoseconds that fit an `i64`), so that every
/// difference of two fits an `i64` too and ages computed from a foreign
/// trace cannot overflow or wrap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Time(pub i128);

impl Serialize for Time {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        rfc3339(self.0).serialize(s)
    }
}

impl Lenient<'_> for Time {
    fn from_text(v: &str) -> Option<Self> {
        parse_rfc3339(v)
            .filter(|t| (0..=i128::from(i64::MAX)).contains(t))
            .map(Time)
    }
}

/// Flags as `"0x…"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hex(pub u64);

impl Serialize for Hex {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("{:#x}", self.0))
    }
}

impl Lenient<'_> for Hex {
    fn from_text(v: &str) -> Option<Self> {
        u64::from_str_radix(v.trim_start_matches("0x"), 16)
            .ok()
            .map(Hex)
    }
}

/// The `CLONE_NEW*` names of flags (written only: `raw_flags` is read).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlagNames(pub u64);

impl Serialize for FlagNames {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(NsKind::in_flags(self.0).map(NsKind::flag_name))
    }
}

/// An array; elements of another type are left out.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct List<T>(pub Vec<T>);

impl<T: Serialize> Serialize for List<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(&self.0)
    }
}

impl<'de, T: Lenient<'de>> Lenient<'de> for List<T> {
    fn from_seq<A: SeqAccess<'de>>(mut seq: A) -> Result<Option<Self>, A::Error> {
        let mut out = Vec::new();
        while let Some(e) = seq.next_element::<Field<T>>()? {
            out.extend(e.get());
        }
        Ok(Some(List(out)))
    }
}

/// `{"mnt": "fentry", …}`; unknown kinds or methods are left out.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KindMethods(pub Vec<(NsKind, EndMethod)>);

impl Serialize for KindMethods {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(k, m)| (k.name(), m.name())))
    }
}

impl<'de> Lenient<'de> for KindMethods {
    fn from_map<A: MapAccess<'de>>(mut map: A) -> Result<Option<Self>, A::Error> {
        let mut out = Vec::new();
        while let Some((k, m)) = map.next_entry::<Field<NsKind>, Field<EndMethod>>()? {
            if let (Some(k), Some(m)) = (k.get(), m.get()) {
                out.push((k, m));
            }
        }
        Ok(Some(KindMethods(out)))
    }
}

/// A loss notice's counts by what was lost (written only).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts<'a>(pub &'a [(&'static str, u64)]);

impl Serialize for Counts<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(k, n)| (k, n)))
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct WireContainer<'a> {
    #[serde(borrow, skip_serializing_if = "Field::is_absent")]
    id: Field<Cow<'a, str>>,
    #[serde(borrow, skip_serializing_if = "Field::is_absent")]
    runtime: Field<Cow<'a, str>>,
    #[serde(borrow, skip_serializing_if = "Field::is_absent")]
    name: Field<Cow<'a, str>>,
    /// Kubernetes pod and namespace, only for CRI containers.
    #[serde(borrow, skip_serializing_if = "Field::is_absent")]
    pod: Field<Cow<'a, str>>,
    #[serde(borrow, skip_serializing_if = "Field::is_absent")]
    namespace: Field<Cow<'a, str>>,
}

impl<'a> WireContainer<'a> {
    fn of(c: &'a Container) -> Self {
        let s = |v: &'a Option<String>| v.as_deref().map(Cow::Borrowed);
        WireContainer {
            id: Field::Is(Cow::Borrowed(&c.id)),
            runtime: Field::Is(Cow::Borrowed(c.runtime)),
            name: Field::null_or(s(&c.name)),
            pod: Field::when(s(&c.pod)),
            namespace: Field::when(s(&c.namespace)),
        }
    }

    fn container(self) -> Option<Container> {
        let s = |v: Field<Cow<str>>| v.get().map(Cow::into_owned);
        Some(Container {
            id: s(self.id)?,
            runtime: crate::enrich::container::runtime_name(
                self.runtime.get().as_deref().unwrap_or(""),
            ),
            name: s(self.name),
            pod: s(self.pod),
            namespace: s(self.namespace),
        })
    }
}

/// `ns_created`: when, by whom and how the namespace was made.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct WireBirth<'a> {
    #[serde(skip_serializing_if = "Field::is_absent")]
    time: Field<Time>,
    #[serde(skip_serializing_if = "Field::is_absent")]
    pid: Field<u32>,
    #[serde(borrow, skip_serializing_if = "Field::is_absent")]
    comm: Field<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Field::is_absent")]
    syscall: Field<Syscall>,
}

/// One namespace of the `start` line's `alive` list.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct WireAlive<'a> {
    #[serde(skip_serializing_if = "Field::is_absent")]
    ns_type: Field<NsKind>,
    #[serde(skip_serializing_if = "Field::is_absent")]
    ns_inode: Field<u32>,
    #[serde(skip_serializing_if = "Field::is_absent")]
    ns_id: Field<u64>,
    #[serde(skip)]
    _line: PhantomData<&'a ()>,
}

/// Every line of a JSON trace. Which fields a line has depends on its
/// `event`; the README's schema lists them. Fields marked
/// `skip_deserializing` are derived from others and not read back.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Wire<'a> {
    #[serde(skip_serializing_if = "Field::is_absent")]
    time: Field<Time>,
    #[serde(borrow, skip_serializing_if = "Field::is_absent")]
    event: Field<Cow<'a, str>>,

    // `start`
    #[serde(borrow, skip_serializing_if = "Field::is_absent")]
    kernel: Field<Cow<'a, str>>,
    #[serde(borrow, skip_serializing_if = "Field::is_absent")]
    ends: Field<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Field::is_absent")]
    ends_by_kind: Field<KindMethods>,
    #[serde(borrow, skip_serializing_if = "Field::is_absent")]
    alive: Field<List<WireAlive<'a>>>,

    // records
    #[serde(skip_serializing_if = "Field::is_absent")]
    ns_type: Field<NsKind>,
    #[serde(skip_serializing_if = "Field::is_absent")]
    ns_inode: Field<u32>,
    #[serde(skip_serializing_if = "Field::is_absent")]
    ns_id: Field<u64>,
    #[serde(skip_serializing_if = "Field::is_absent")]
    prev_inode: Field<u32>,
    #[serde(skip_serializing_if = "Field::is_absent")]
    syscall: Field<Syscall>,
    #[serde(skip_deserializing, skip_serializing_if = "Field::is_absent")]
    flags: Field<FlagNames>,
    #[serde(skip_serializing_if = "Field::is_absent")]
    raw_flags: Field<Hex>,
    #[serde(skip_serializing_if = "Field::is_absent")]
    pid: Field<u32>,
    #[serde(skip_serializing_if = "Field::is_absent")]
    tid: Field<u32>,
    #[serde(skip_serializing_if = "Field::is_absent")]
    ppid: Field<u32>,
    #[serde(borrow, skip_serializing_if = "Field::is_absent")]
    comm: Field<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Field::is_absent")]
    vpid: Field<u32>,
    #[serde(skip_serializing_if = "Field::is_absent")]
    uid: Field<u32>,
    /// Only where it differs from `uid`.
    #[serde(skip_serializing_if = "Field::is_absent")]
    euid: Field<u32>,
    /// User-namespace creates only: made without CAP_SYS_ADMIN.
    #[serde(skip_serializing_if = "Field::is_absent")]
    unprivileged: Field<bool>,
    #[serde(borrow, skip_serializing_if = "Field::is_absent")]
    container: Field<WireContainer<'a>>,
    #[serde(skip_serializing_if = "Field::is_absent")]
    child_pid: Field<u32>,
    /// `false` when the caller's memory could not be read (only then written).
    #[serde(skip_serializing_if = "Field::is_absent")]
    flags_read: Field<bool>,
    #[serde(skip_serializing_if = "Field::is_absent")]
    claimed_flags: Field<Hex>,
    #[serde(skip_serializing_if = "Field::is_absent")]
    fd: Field<i32>,
    #[serde(skip_deserializing, skip_serializing_if = "Field::is_absent")]
    errno: Field<String>,
    #[serde(skip_serializing_if = "Field::is_absent")]
    errno_num: Field<i32>,
    #[serde(skip_serializing_if = "Field::is_absent")]
    owner_user_ns: Field<u32>,
    #[serde(skip_serializing_if = "Field::is_absent")]
    parent_pid_ns: Field<u32>,
    #[serde(borrow, skip_serializing_if = "Field::is_absent")]
    ns_created: Field<WireBirth<'a>>,
    #[serde(borrow, skip_serializing_if = "Field::is_absent")]
    ns_container: Field<WireContainer<'a>>,
    #[serde(skip_serializing_if = "Field::is_absent")]
    end: Field<EndCause>,
    #[serde(skip_serializing_if = "Field::is_absent")]
    end_by: Field<EndMethod>,
    #[serde(skip_deserializing, skip_serializing_if = "Field::is_absent")]
    lifetime_ns: Field<i64>,
    #[serde(skip_serializing_if = "Field::is_absent")]
    init_pid: Field<u32>,
    #[serde(borrow, skip_serializing_if = "Field::is_absent")]
    pinned_by: Field<List<Cow<'a, str>>>,
    /// Leak: how long it has outlived its container.
    #[serde(skip_serializing_if = "Field::is_absent")]
    age_ns: Field<i64>,

    // `stop` and `lost`
    #[serde(skip_serializing_if = "Field::is_absent")]
    records: Field<u64>,
    #[serde(skip_serializing_if = "Field::is_absent")]
    kernel_events: Field<u64>,
    #[serde(skip_serializing_if = "Field::is_absent")]
    kernel_events_total: Field<u64>,
    #[serde(skip_serializing_if = "Field::is_absent")]
    lost: Field<u64>,
    #[serde(skip_deserializing, skip_serializing_if = "Field::is_absent")]
    by_kind: Field<Counts<'a>>,
    #[serde(skip_serializing_if = "Field::is_absent")]
    syscalls_missed: Field<u64>,
    #[serde(skip_serializing_if = "Field::is_absent")]
    namespaces_unwatched: Field<u64>,
    #[serde(skip_serializing_if = "Field::is_absent")]
    namespaces_forgotten: Field<u64>,
    #[serde(skip_serializing_if = "Field::is_absent")]
    exits_untracked: Field<u64>,
    #[serde(skip_serializing_if = "Field::is_absent")]
    processes_unfollowed: Field<u64>,
    #[serde(skip_serializing_if = "Field::is_absent")]
    probe_runs_skipped: Field<u64>,
    #[serde(skip_deserializing, skip_serializing_if = "Field::is_absent")]
    probe_runs_skipped_by: Field<Counts<'a>>,
}

/// One line of a saved trace, read back (`nstrace report`).
#[derive(Debug)]
pub enum Line {
    Start(Start),
    Record(Box<Record>),
    /// A loss notice: kernel events dropped since the previous one.
    Lost(u64),
    Stop(Stop),
}

fn named(s: &'static str) -> Field<Cow<'static, str>> {
    Field::Is(Cow::Borrowed(s))
}

impl<'a> Wire<'a> {
    pub fn record(r: &'a Record) -> Self {
        let a = r.actor.as_ref();
        let is_destroy = r.event == EventType::Destroy;
        Wire {
            time: Field::Is(Time(r.time_ns)),
            event: named(r.event.name()),
            ns_type: Field::null_or(r.kind),
            ns_inode: Field::null_or(r.inode),
            ns_id: Field::null_or(r.ns_id),
            prev_inode: Field::when(r.prev_inode),
            syscall: Field::null_or(r.syscall),
            flags: Field::Is(FlagNames(r.flags)),
            raw_flags: Field::Is(Hex(r.flags)),
            pid: Field::null_or(a.map(|a| a.pid)),
            tid: Field::null_or(a.map(|a| a.tid)),
            ppid: Field::null_or(a.map(|a| a.ppid)),
            comm: Field::null_or(a.map(|a| Cow::Borrowed(a.comm.as_str()))),
            vpid: Field::null_or(a.map(|a| a.vpid)),
            uid: Field::null_or(a.map(|a| a.uid)),
            euid: Field::when(a.filter(|a| a.euid != a.uid).map(|a| a.euid)),
            // Who may create a user namespace is the first question about
            // one: without CAP_SYS_ADMIN where it was made, it was made
            // unprivileged.
            unprivileged: Field::when(match (r.event, r.kind, a) {
                (EventType::Create, Some(NsKind::User), Some(a)) => Some(!a.admin),
                _ => None,
            }),
            container: Field::null_or(r.container.as_ref().map(WireContainer::of)),
            child_pid: Field::when(r.child_pid),
            // `flags` are the kernel's; what the caller's memory said is detail.
            flags_read: Field::when(r.flags_unread.then_some(false)),
            claimed_flags: Field::when(r.claimed_flags.map(Hex)),
            fd: Field::when(r.fd),
            errno: Field::when(r.errno.map(errno::name)),
            errno_num: Field::when(r.errno),
            owner_user_ns: Field::when(r.owner_inode),
            parent_pid_ns: Field::when(r.parent_inode),
            ns_created: Field::when(r.born.as_ref().map(|b| WireBirth {
                time: Field::Is(Time(b.time_ns)),
                pid: Field::Is(b.pid),
                comm: Field::Is(Cow::Borrowed(&b.comm)),
                syscall: Field::Is(b.syscall),
            })),
            ns_container: Field::when(r.ns_container.as_ref().map(WireContainer::of)),
            end: Field::when(r.end.filter(|_| is_destroy)),
            end_by: Field::when(r.end_by.filter(|_| is_destroy)),
            lifetime_ns: if is_destroy {
                Field::null_or(r.born.as_ref().map(|b| (r.time_ns - b.time_ns) as i64))
            } else {
                Field::Absent
            },
            init_pid: Field::when(r.init_pid.filter(|_| is_destroy)),
            pinned_by: if matches!(r.event, EventType::Pinned | EventType::Leak) {
                Field::Is(List(
                    r.pinned_by
                        .iter()
                        .map(|p| Cow::Borrowed(p.as_str()))
                        .collect(),
                ))
            } else {
                Field::Absent
            },
            age_ns: if r.event == EventType::Leak {
                Field::null_or(r.age_ns.map(|a| a as i64))
            } else {
                Field::Absent
            },
            ..Wire::default()
        }
    }

    /// `{"event": "start", "time", "kernel", "ends", "ends_by_kind": {"net":
    /// "fentry", ...}, "alive": [...]}`
    pub fn start(st: &'a Start) -> Self {
        Wire {
            time: Field::Is(Time(st.time_ns)),
            event: named("start"),
            kernel: Field::Is(Cow::Borrowed(&st.kernel)),
            ends: Field::Is(Cow::Borrowed(&st.ends)),
            ends_by_kind: Field::Is(KindMethods(st.ends_by_kind.clone())),
            alive: Field::Is(List(
                st.alive
                    .iter()
                    .map(|&(k, i, id)| WireAlive {
                        ns_type: Field::Is(k),
                        ns_inode: Field::Is(i),
                        ns_id: Field::null_or(id),
                        _line: PhantomData,
                    })
                    .collect(),
            )),
            ..Wire::default()
        }
    }

    /// `{"event": "stop", "time", "records", "kernel_events", "lost"}`
    pub fn stop(st: &Stop) -> Self {
        Wire {
            time: Field::Is(Time(st.time_ns)),
            event: named("stop"),
            records: Field::Is(st.records),
            kernel_events: Field::Is(st.kernel_events),
            lost: Field::Is(st.lost),
            ..Wire::default()
        }
    }

    /// `"event": "lost"`: counts since the previous notice.
    pub fn lost(l: &'a Loss) -> Self {
        Wire {
            time: Field::Is(Time(l.time_ns)),
            event: named("lost"),
            kernel_events: Field::Is(l.events),
            kernel_events_total: Field::Is(l.events_total),
            by_kind: Field::Is(Counts(&l.by_kind)),
            syscalls_missed: Field::Is(l.syscalls_missed),
            namespaces_unwatched: Field::Is(l.unwatched),
            namespaces_forgotten: Field::Is(l.forgotten),
            exits_untracked: Field::Is(l.untracked),
            processes_unfollowed: Field::Is(l.unfollowed),
            probe_runs_skipped: Field::Is(l.skipped),
            probe_runs_skipped_by: Field::Is(Counts(&l.skipped_by)),
            ..Wire::default()
        }
    }

    /// The line this is; `Err` says what is missing.
    pub fn line(self) -> Result<Line, String> {
        let time = || {
            self.time
                .clone()
                .get()
                .map(|t| t.0)
                .ok_or("no valid \"time\" (RFC 3339, UTC, 1970 to 2262)")
        };
        let count = |f: &Field<u64>| f.clone().get().unwrap_or(0);
        let event = self.event.clone().get().ok_or("no \"event\"")?;
        Ok(match &*event {
            "start" => Line::Start(Start {
                time_ns: time()?,
                kernel: self.kernel.get().unwrap_or_default().into_owned(),
                ends: self.ends.get().unwrap_or_default().into_owned(),
                ends_by_kind: self.ends_by_kind.get().unwrap_or_default().0,
                alive: (self.alive.get().unwrap_or_default().0)
                    .into_iter()
                    .filter_map(|n| Some((n.ns_type.get()?, n.ns_inode.get()?, n.ns_id.get())))
                    .collect(),
            }),
            "stop" => Line::Stop(Stop {
                time_ns: time()?,
                records: count(&self.records),
                kernel_events: count(&self.kernel_events),
                lost: count(&self.lost),
            }),
            "lost" => Line::Lost(count(&self.kernel_events)),
            name => {
                let event =
                    EventType::from_name(name).ok_or_else(|| format!("unknown event {name:?}"))?;
                let time_ns = time()?;
                Line::Record(Box::new(self.into_record(event, time_ns)))
            }
        })
    }

    fn into_record(self, event: EventType, time_ns: i128) -> Record {
        let owned = |v: Field<Cow<str>>| v.get().map(Cow::into_owned);
        let actor = self.pid.get().map(|pid| {
            let uid = self.uid.clone().get().unwrap_or(0);
            Actor {
                pid,
                tid: self.tid.get().unwrap_or(pid),
                ppid: self.ppid.get().unwrap_or(0),
                comm: owned(self.comm).unwrap_or_default(),
                vpid: self.vpid.get().unwrap_or(0),
                uid,
                euid: self.euid.get().unwrap_or(uid),
                admin: !self.unprivileged.get().unwrap_or(false),
                ..Actor::default()
            }
        });
        Record {
            time_ns,
            event,
            kind: self.ns_type.get(),
            inode: self.ns_inode.get(),
            ns_id: self.ns_id.get(),
            prev_inode: self.prev_inode.get(),
            syscall: self.syscall.get(),
            flags: self.raw_flags.get().map_or(0, |h| h.0),
            actor,
            child_pid: self.child_pid.get(),
            flags_unread: self.flags_read.get() == Some(false),
            claimed_flags: self.claimed_flags.get().map(|h| h.0),
            fd: self.fd.get(),
            errno: self.errno_num.get(),
            owner_inode: self.owner_user_ns.get(),
            parent_inode: self.parent_pid_ns.get(),
            born: self.ns_created.get().and_then(|b| {
                Some(Birth {
                    time_ns: b.time.get()?.0,
                    pid: b.pid.get()?,
                    comm: owned(b.comm)?,
                    syscall: b.syscall.get()?,
                })
            }),
            end: self.end.get(),
            end_by: self.end_by.get(),
            init_pid: self.init_pid.get(),
            pinned_by: (self.pinned_by.get().unwrap_or_default().0)
                .into_iter()
                .map(Cow::into_owned)
                .collect(),
            age_ns: self.age_ns.get().map(i128::from),
            container: self.container.get().and_then(WireContainer::container),
            ns_container: self.ns_container.get().and_then(WireContainer::container),
            followed: false,
        }
    }
}
