//! The one place that knows kernel struct layouts: field offsets are looked up
//! by name in the running kernel's BTF, so one binary serves every kernel.

use anyhow::{Result, anyhow, bail};
use nstrace_common::{
    FREE_SLOTS, FreeTarget, KIND_FROM_NS_TYPE, NO_COUNT, NO_FIELD, NS_KINDS, Offsets,
};

use super::btf::{Btf, Kind, Type};
use crate::model::NsKind;

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Per kind: the namespace struct, and its pointer's name inside `struct nsproxy`
/// (pid and time: the "for children" one, where unshare and setns act).
const KIND_STRUCTS: [(NsKind, &str, Option<&str>); NS_KINDS] = [
    (NsKind::Mnt, "mnt_namespace", Some("mnt_ns")),
    (NsKind::Uts, "uts_namespace", Some("uts_ns")),
    (NsKind::Ipc, "ipc_namespace", Some("ipc_ns")),
    (NsKind::Pid, "pid_namespace", Some("pid_ns_for_children")),
    (NsKind::Net, "net", Some("net_ns")),
    (NsKind::User, "user_namespace", None),
    (NsKind::Cgroup, "cgroup_namespace", Some("cgroup_ns")),
    (NsKind::Time, "time_namespace", Some("time_ns_for_children")),
];

/// What the BTF told us beyond the offsets themselves.
#[derive(Clone, Debug)]
pub struct Layout {
    pub offsets: Offsets,
    /// fentry attach points for namespace ends: (kernel function, target).
    pub free_targets: Vec<(String, FreeTarget)>,
    /// Kinds this kernel does not have (e.g. time without CONFIG_TIME_NS).
    pub missing_kinds: Vec<NsKind>,
    /// Whether `ns_common` carries the 64-bit `ns_id`.
    pub has_ns_id: bool,
    /// BTF id of the first free function: asking the kernel whether it
    /// allows fentry there costs one small load, not a second BTF parse.
    pub fentry_probe: Option<u32>,
}

impl Layout {
    /// Leaves the ends of `kinds` to another method: their free functions
    /// are not hooked, and a common free path does not report them.
    pub fn skip_fentry(&mut self, kinds: &[NsKind]) {
        let mask = kinds.iter().fold(0u32, |m, k| m | 1 << k.index());
        for (_, t) in &mut self.free_targets {
            t.kinds &= !mask;
        }
        self.free_targets.retain(|(_, t)| t.kinds != 0);
    }
}

/// Where the kernel image is mapped: x86_64 keeps it (and modules) in the top
/// 2 GiB, above the direct map, vmalloc and vmemmap, with or without KASLR,
/// so a namespace struct there is one of the static initial namespaces, not
/// an allocation that could be freed and reused. Elsewhere: no shortcut.
#[cfg(target_arch = "x86_64")]
const STATIC_FLOOR: u64 = 0xffff_ffff_8000_0000;
#[cfg(not(target_arch = "x86_64"))]
const STATIC_FLOOR: u64 = u64::MAX;

/// Reads the running kernel's BTF and computes every offset the eBPF side uses.
pub fn from_running_kernel() -> Result<Layout> {
    let btf = Btf::from_file(VMLINUX_BTF)?;
    from_btf(&btf)
}

pub fn from_btf(btf: &Btf) -> Result<Layout> {
    let mut o = Offsets::EMPTY;
    o.task_nsproxy = field(btf, "task_struct", &["nsproxy"])?;
    o.task_real_cred = field(btf, "task_struct", &["real_cred"])?;
    o.task_real_parent = field(btf, "task_struct", &["real_parent"])?;
    o.task_tgid = field(btf, "task_struct", &["tgid"])?;
    o.task_pid = field(btf, "task_struct", &["pid"])?;
    o.cred_user_ns = field(btf, "cred", &["user_ns"])?;
    o.task_cred = optional_field(btf, "task_struct", &["cred"])?.unwrap_or(NO_FIELD);
    o.cred_euid = optional_field(btf, "cred", &["euid"])?.unwrap_or(NO_FIELD);
    o.cred_cap_effective = optional_field(btf, "cred", &["cap_effective"])?.unwrap_or(NO_FIELD);
    let mut missing_kinds = Vec::new();
    let mut has_ns_id = false;
    for (kind, ns_struct, proxy_field) in KIND_STRUCTS {
        let i = kind.index();
        let proxy = match proxy_field {
            Some(f) => optional_field(btf, "nsproxy", &[f])?,
            None => Some(NO_FIELD),
        };
        let inum = optional_field(btf, ns_struct, &["ns", "inum"])?;
        let (Some(proxy), Some(inum)) = (proxy, inum) else {
            missing_kinds.push(kind);
            continue;
        };
        o.nsproxy[i] = proxy;
        o.inum[i] = inum;
        if let Some(id) = optional_field(btf, ns_struct, &["ns", "ns_id"])? {
            o.ns_id[i] = id;
            has_ns_id = true;
        }
        let owner = if kind == NsKind::User {
            "parent"
        } else {
            "user_ns"
        };
        o.owner[i] = optional_field(btf, ns_struct, &[owner])?.unwrap_or(NO_FIELD);
    }
    o.pidns_parent = optional_field(btf, "pid_namespace", &["parent"])?.unwrap_or(NO_FIELD);
    o.pidns_child_reaper = field(btf, "pid_namespace", &["child_reaper"])?;
    o.task_thread_pid = optional_field(btf, "task_struct", &["thread_pid"])?.unwrap_or(NO_FIELD);
    o.pid_level = optional_field(btf, "pid", &["level"])?.unwrap_or(NO_FIELD);
    o.pid_numbers = optional_field(btf, "pid", &["numbers"])?.unwrap_or(NO_FIELD);
    o.upid_size = struct_size(btf, "upid").unwrap_or(NO_FIELD);
    o.pid_ino = optional_field(btf, "pid", &["ino"])?.unwrap_or(NO_FIELD);
    for required in [NsKind::Mnt, NsKind::Net, NsKind::User] {
        if missing_kinds.contains(&required) {
            bail!(
                "kernel BTF has no layout for the {} namespace",
                required.name()
            );
        }
    }
    o.nscommon_inum = field(btf, "ns_common", &["inum"])?;
    o.nscommon_id = optional_field(btf, "ns_common", &["ns_id"])?.unwrap_or(NO_FIELD);
    o.nscommon_type = optional_field(btf, "ns_common", &["ns_type"])?.unwrap_or(NO_FIELD);
    o.static_floor = STATIC_FLOOR;
    o.valid = 1;
    let free_targets = free_targets(btf, &o, &missing_kinds)?;
    let fentry_probe = free_targets.first().and_then(|(func, _)| {
        btf.by_name(func)
            .find(|t| t.kind == Kind::Func)
            .map(|t| t.id)
    });
    Ok(Layout {
        offsets: o,
        free_targets,
        missing_kinds,
        has_ns_id,
        fentry_probe,
    })
}

/// How a free function's first argument leads to the namespace.
enum Arg {
    /// A pointer to the kind's own struct.
    Ns,
    /// A pointer to the named member (an `rcu_head`, `work_struct` or
    /// `kref`) of the kind's struct.
    Member(&'static str),
}

/// A kernel function that marks a namespace's end.
struct Candidate {
    kind: NsKind,
    func: &'static str,
    arg: Arg,
    /// A `put_*` that ends the namespace only when the count is 1.
    last_put: bool,
    /// Hooked beside the kind's chosen function, not instead of it: a
    /// caller into which that function may be inlined (the kernel side
    /// reports one free once, whichever hook sees it first).
    also: bool,
}

const fn c(kind: NsKind, func: &'static str, arg: Arg) -> Candidate {
    Candidate {
        kind,
        func,
        arg,
        last_put: false,
        also: false,
    }
}

/// Per kind, the kernel functions that mark a namespace's end, best first.
/// Names and signatures move between versions, so each is looked up (with
/// its first parameter's type) in the running kernel's BTF; the first that
/// matches is hooked, with the `also` ones that match.
const FREE_CANDIDATES: &[Candidate] = &[
    c(NsKind::Uts, "free_uts_ns", Arg::Ns),
    // 5.10: the kref_put release function, given the kref.
    c(NsKind::Uts, "free_uts_ns", Arg::Member("kref")),
    c(NsKind::Ipc, "free_ipc_ns", Arg::Ns),
    // Where free_ipc_ns is inlined into the deferred free_ipc work (5.10,
    // 6.1, 6.12): the last put, when the count is 1 (ns_common's, or 5.10's
    // own ipc_namespace.count). Nothing can take a new reference then: that
    // needs one already.
    Candidate {
        last_put: true,
        ..c(NsKind::Ipc, "put_ipc_ns", Arg::Ns)
    },
    // nsfs's put (an fd closed, a bind mount gone) calls put_ipc_ns from
    // the same file, where 5.10 inlines it: hooked too.
    Candidate {
        last_put: true,
        also: true,
        ..c(NsKind::Ipc, "ipcns_put", Arg::Member("ns"))
    },
    c(NsKind::Mnt, "free_mnt_ns", Arg::Ns),
    c(NsKind::Pid, "delayed_free_pidns", Arg::Member("rcu")),
    // A pernet exit, called through a pointer for each dying net (never
    // inlined); __put_net can be inlined into nsfs's put in the same file.
    c(NsKind::Net, "net_ns_net_exit", Arg::Ns),
    c(NsKind::Net, "__put_net", Arg::Ns),
    // free_user_ns (a work function) frees a whole parent chain in one call
    // on 6.1/6.12: these two run once per namespace inside its loop, before
    // the memory goes (CONFIG_SYSCTL, CONFIG_KEYS); free_user_ns and the put
    // helper only where they are absent.
    c(NsKind::User, "retire_userns_sysctls", Arg::Ns),
    c(NsKind::User, "key_free_user_ns", Arg::Ns),
    c(NsKind::User, "free_user_ns", Arg::Member("work")),
    c(NsKind::User, "__put_user_ns", Arg::Ns),
    c(NsKind::Cgroup, "free_cgroup_ns", Arg::Ns),
    c(NsKind::Time, "free_time_ns", Arg::Ns),
    c(NsKind::Time, "free_time_ns", Arg::Member("kref")),
];

/// The struct a function's first parameter points to, if the function is in BTF.
fn first_param_struct(btf: &Btf, func: &str) -> Result<Option<String>> {
    let Some(f) = btf.by_name(func).find(|t| t.kind == Kind::Func) else {
        return Ok(None);
    };
    let proto = btf.ty(f.size_or_type)?;
    let Some(&param) = btf.params(&proto).first() else {
        return Ok(None);
    };
    let ptr = btf.strip(param)?;
    if ptr.kind != Kind::Ptr {
        return Ok(None);
    }
    let pointee = btf.strip(ptr.size_or_type)?;
    Ok((pointee.kind == Kind::Struct).then(|| btf.name(&pointee).into_owned()))
}

/// Where `cand` points, if the running kernel has it with the expected
/// first parameter.
fn free_target(btf: &Btf, o: &Offsets, cand: &Candidate) -> Result<Option<FreeTarget>> {
    let kind = cand.kind;
    let (_, ns_struct, _) = KIND_STRUCTS[kind.index()];
    // `ns` (the ns_common) inside the kind's struct.
    let ns_off = o.inum[kind.index()] as i64 - o.nscommon_inum as i64;
    let Some(param) = first_param_struct(btf, cand.func)? else {
        return Ok(None);
    };
    let delta = match cand.arg {
        Arg::Ns if param == ns_struct => ns_off,
        Arg::Member(m) => match optional_field(btf, ns_struct, &[m])? {
            // rcu_head is a typedef of callback_head.
            Some(member_off)
                if matches!(
                    param.as_str(),
                    "rcu_head" | "callback_head" | "work_struct" | "kref" | "ns_common"
                ) =>
            {
                ns_off - member_off as i64
            }
            _ => return Ok(None),
        },
        _ => return Ok(None),
    };
    // The count a last put is judged by: ns_common's (5.11+) or the
    // struct's own (5.10), as an offset from the ns_common.
    let count_delta = if cand.last_put {
        match optional_field(btf, ns_struct, &["ns", "count"])? {
            Some(off) => off as i64 - ns_off,
            None => match optional_field(btf, ns_struct, &["count"])? {
                Some(off) => off as i64 - ns_off,
                None => return Ok(None),
            },
        }
    } else {
        i64::from(NO_COUNT)
    };
    Ok(Some(FreeTarget {
        kind: kind.index() as u32,
        delta: delta as i32,
        count_delta: count_delta as i32,
        kinds: 1 << kind.index(),
    }))
}

fn free_targets(btf: &Btf, o: &Offsets, missing: &[NsKind]) -> Result<Vec<(String, FreeTarget)>> {
    // 6.18+: one common free path for every kind.
    if o.nscommon_type != NO_FIELD
        && first_param_struct(btf, "__ns_common_free")?.as_deref() == Some("ns_common")
    {
        let t = FreeTarget {
            kind: KIND_FROM_NS_TYPE,
            delta: 0,
            count_delta: NO_COUNT,
            kinds: NsKind::ALL
                .iter()
                .filter(|k| !missing.contains(k))
                .fold(0, |m, k| m | 1 << k.index()),
        };
        return Ok(vec![("__ns_common_free".to_string(), t)]);
    }
    let mut out: Vec<(String, FreeTarget)> = Vec::new();
    for kind in NsKind::ALL {
        if missing.contains(&kind) {
            continue;
        }
        let mut chosen = false;
        for cand in FREE_CANDIDATES.iter().filter(|c| c.kind == kind) {
            if cand.also != chosen {
                continue;
            }
            if let Some(t) = free_target(btf, o, cand)? {
                out.push((cand.func.to_string(), t));
                chosen = true;
            }
        }
    }
    out.truncate(FREE_SLOTS);
    Ok(out)
}

fn field(btf: &Btf, strukt: &str, path: &[&str]) -> Result<u32> {
    optional_field(btf, strukt, path)?.ok_or_else(|| {
        anyhow!(
            "kernel BTF: struct {strukt} has no field {}",
            path.join(".")
        )
    })
}

/// Byte offset of `path` (e.g. `["ns", "inum"]`) inside `struct strukt`, looking
/// through anonymous structs and unions; `None` if the struct or a field is absent.
fn optional_field(btf: &Btf, strukt: &str, path: &[&str]) -> Result<Option<u32>> {
    let Some(mut ty) = find_struct(btf, strukt) else {
        return Ok(None);
    };
    let mut total = 0;
    for (n, name) in path.iter().enumerate() {
        let Some((bits, member_ty)) = member(btf, &ty, name)? else {
            return Ok(None);
        };
        total += bits;
        if n + 1 < path.len() {
            ty = btf.strip(member_ty)?;
        }
    }
    if total % 8 != 0 {
        bail!("kernel BTF: {strukt}.{} is a bitfield", path.join("."));
    }
    Ok(Some(total / 8))
}

fn struct_size(btf: &Btf, name: &str) -> Option<u32> {
    find_struct(btf, name).map(|t| t.size_or_type)
}

/// The complete definition of `struct name` (not a forward declaration).
fn find_struct(btf: &Btf, name: &str) -> Option<Type> {
    btf.by_name(name)
        .find(|t| t.kind == Kind::Struct && !btf.members(t).is_empty())
}

/// (bit offset, type id) of member `name` of a struct or union, searching
/// anonymous members too.
fn member(btf: &Btf, ty: &Type, name: &str) -> Result<Option<(u32, u32)>> {
    for m in btf.members(ty) {
        if m.name == name {
            return Ok(Some((m.bit_offset, m.type_id)));
        }
        if m.name.is_empty() {
            let inner = btf.strip(m.type_id)?;
            if let Some((bits, t)) = member(btf, &inner, name)? {
                return Ok(Some((m.bit_offset + bits, t)));
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Needs only a readable BTF (no root): the layouts must resolve on the
    /// kernel the tests run on.
    #[test]
    fn running_kernel_layout_resolves() {
        if !std::path::Path::new(VMLINUX_BTF).exists() {
            eprintln!("skipping: {VMLINUX_BTF} absent");
            return;
        }
        let layout = from_running_kernel().unwrap();
        let o = layout.offsets;
        assert_ne!(o.task_nsproxy, NO_FIELD);
        assert_ne!(o.task_real_cred, NO_FIELD);
        assert_ne!(o.cred_user_ns, NO_FIELD);
        assert_eq!(o.nsproxy[NsKind::User.index()], NO_FIELD);
        assert_ne!(o.inum[NsKind::Net.index()], NO_FIELD);
        // `pid` sits right before `tgid` in task_struct on every kernel.
        assert_eq!(o.task_pid + 4, o.task_tgid);
        // Every kind's end can be hooked: one common path, or one per kind.
        let t = &layout.free_targets;
        let reported = t.iter().fold(0, |m, (_, t)| m | t.kinds);
        for k in NsKind::ALL {
            assert_eq!(
                reported & 1 << k.index() != 0,
                !layout.missing_kinds.contains(&k),
                "{k:?}: {t:?}"
            );
        }
        let mut skipping = layout.clone();
        skipping.skip_fentry(&[NsKind::Uts]);
        let reported = skipping
            .free_targets
            .iter()
            .fold(0, |m, (_, t)| m | t.kinds);
        assert_eq!(reported & 1 << NsKind::Uts.index(), 0);
        assert_ne!(reported & 1 << NsKind::Net.index(), 0);
    }
}
