//! A lean reader of the kernel's BTF: the raw bytes plus one offset per type,
//! looked up on demand. A full parse of vmlinux BTF (150k types) costs tens of
//! megabytes; nstrace needs a few dozen fields once, at start-up.

use std::borrow::Cow;

use anyhow::{Context as _, Result, bail, ensure};

const MAGIC: u16 = 0xeb9f;
const HEADER_MIN: usize = 24;

/// The BTF kinds nstrace looks at (numbers from include/uapi/linux/btf.h).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Int = 1,
    Ptr = 2,
    Array = 3,
    Struct = 4,
    Union = 5,
    Enum = 6,
    Fwd = 7,
    Typedef = 8,
    Volatile = 9,
    Const = 10,
    Restrict = 11,
    Func = 12,
    FuncProto = 13,
    Var = 14,
    Datasec = 15,
    Float = 16,
    DeclTag = 17,
    TypeTag = 18,
    Enum64 = 19,
}

impl Kind {
    fn from_info(info: u32) -> Result<Self> {
        use Kind::*;
        Ok(match (info >> 24) & 0x1f {
            1 => Int,
            2 => Ptr,
            3 => Array,
            4 => Struct,
            5 => Union,
            6 => Enum,
            7 => Fwd,
            8 => Typedef,
            9 => Volatile,
            10 => Const,
            11 => Restrict,
            12 => Func,
            13 => FuncProto,
            14 => Var,
            15 => Datasec,
            16 => Float,
            17 => DeclTag,
            18 => TypeTag,
            19 => Enum64,
            k => bail!("kernel BTF: unknown type kind {k}"),
        })
    }

    /// Bytes that follow the 12-byte common header of a type of this kind.
    fn trailer(self, vlen: usize) -> usize {
        use Kind::*;
        match self {
            Int | Var | DeclTag => 4,
            Array => 12,
            Struct | Union | Datasec | Enum64 => 12 * vlen,
            Enum | FuncProto => 8 * vlen,
            Ptr | Fwd | Typedef | Volatile | Const | Restrict | Func | Float | TypeTag => 0,
        }
    }
}

/// One type, borrowed from the raw bytes.
#[derive(Clone, Copy, Debug)]
pub struct Type {
    pub id: u32,
    pub kind: Kind,
    name_off: u32,
    vlen: usize,
    kind_flag: bool,
    /// `size` for structs and unions, the target type id for pointers,
    /// typedefs, qualifiers, functions; the return type for prototypes.
    pub size_or_type: u32,
    /// Offset of the trailer in the type section.
    at: usize,
}

/// A struct or union member.
#[derive(Clone, Debug)]
pub struct Member<'a> {
    pub name: Cow<'a, str>,
    pub type_id: u32,
    pub bit_offset: u32,
}

pub struct Btf {
    data: Vec<u8>,
    types: std::ops::Range<usize>,
    strings: std::ops::Range<usize>,
    /// Index i holds the offset (in the type section) of type id i + 1.
    offsets: Vec<u32>,
}

impl Btf {
    pub fn from_file(path: &str) -> Result<Self> {
        let data = std::fs::read(path).with_context(|| format!("reading {path}"))?;
        Self::parse(data)
    }

    pub fn parse(data: Vec<u8>) -> Result<Self> {
        ensure!(data.len() >= HEADER_MIN, "kernel BTF: file too short");
        let u16_at = |o: usize| u16::from_ne_bytes([data[o], data[o + 1]]);
        ensure!(
            u16_at(0) == MAGIC,
            "kernel BTF: bad magic (not BTF, or another endianness)"
        );
        let u32_at = |o: usize| u32::from_ne_bytes(data[o..o + 4].try_into().unwrap());
        let hdr_len = u32_at(4) as usize;
        let section = |off: usize, len: usize| -> Result<std::ops::Range<usize>> {
            let start = hdr_len.checked_add(off).context("kernel BTF: bad header")?;
            let end = start.checked_add(len).context("kernel BTF: bad header")?;
            ensure!(end <= data.len(), "kernel BTF: section past the end");
            Ok(start..end)
        };
        let types = section(u32_at(8) as usize, u32_at(12) as usize)?;
        let strings = section(u32_at(16) as usize, u32_at(20) as usize)?;
        let mut btf = Self {
            data,
            types,
            strings,
            offsets: Vec::new(),
        };
        btf.index()?;
        Ok(btf)
    }

    fn index(&mut self) -> Result<()> {
        let mut at = 0;
        let len = self.types.len();
        let mut offsets = Vec::with_capacity(len / 16);
        while at < len {
            ensure!(at + 12 <= len, "kernel BTF: truncated type");
            let info = self.type_u32(at + 4);
            let kind = Kind::from_info(info)?;
            offsets.push(at as u32);
            at += 12 + kind.trailer((info & 0xffff) as usize);
        }
        ensure!(at == len, "kernel BTF: truncated type");
        self.offsets = offsets;
        Ok(())
    }

    fn type_u32(&self, at: usize) -> u32 {
        let o = self.types.start + at;
        u32::from_ne_bytes(self.data[o..o + 4].try_into().unwrap())
    }

    /// Type `id` (1-based; 0 is void and has no record).
    pub fn ty(&self, id: u32) -> Result<Type> {
        let Some(&at) = id.checked_sub(1).and_then(|i| self.offsets.get(i as usize)) else {
            bail!("kernel BTF: no type {id}");
        };
        let at = at as usize;
        let info = self.type_u32(at + 4);
        Ok(Type {
            id,
            kind: Kind::from_info(info)?,
            name_off: self.type_u32(at),
            vlen: (info & 0xffff) as usize,
            kind_flag: info >> 31 == 1,
            size_or_type: self.type_u32(at + 8),
            at: at + 12,
        })
    }

    pub fn name(&self, ty: &Type) -> Cow<'_, str> {
        self.string(ty.name_off)
    }

    fn string(&self, off: u32) -> Cow<'_, str> {
        let s = &self.data[self.strings.clone()];
        let tail = s.get(off as usize..).unwrap_or_default();
        let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
        String::from_utf8_lossy(&tail[..end])
    }

    fn name_is(&self, off: u32, name: &str) -> bool {
        let s = &self.data[self.strings.clone()];
        let n = name.as_bytes();
        s.get(off as usize..off as usize + n.len() + 1)
            .is_some_and(|t| &t[..n.len()] == n && t[n.len()] == 0)
    }

    /// Every type called `name`, in id order (a linear scan: lookups are few).
    pub fn by_name<'a>(&'a self, name: &'a str) -> impl Iterator<Item = Type> + 'a {
        (1..=self.offsets.len() as u32).filter_map(move |id| {
            let at = self.offsets[id as usize - 1] as usize;
            if self.name_is(self.type_u32(at), name) {
                self.ty(id).ok()
            } else {
                None
            }
        })
    }

    /// Members of a struct or union (empty for anything else).
    pub fn members(&self, ty: &Type) -> Vec<Member<'_>> {
        if !matches!(ty.kind, Kind::Struct | Kind::Union) {
            return Vec::new();
        }
        (0..ty.vlen)
            .map(|i| {
                let at = ty.at + 12 * i;
                let raw = self.type_u32(at + 8);
                Member {
                    name: self.string(self.type_u32(at)),
                    type_id: self.type_u32(at + 4),
                    // With kind_flag the top byte is a bitfield's size.
                    bit_offset: if ty.kind_flag { raw & 0xff_ffff } else { raw },
                }
            })
            .collect()
    }

    /// Parameter type ids of a function prototype.
    pub fn params(&self, ty: &Type) -> Vec<u32> {
        if ty.kind != Kind::FuncProto {
            return Vec::new();
        }
        (0..ty.vlen)
            .map(|i| self.type_u32(ty.at + 8 * i + 4))
            .collect()
    }

    /// Follows typedefs and qualifiers from type `id` to the type underneath.
    pub fn strip(&self, mut id: u32) -> Result<Type> {
        for _ in 0..32 {
            let ty = self.ty(id)?;
            match ty.kind {
                Kind::Typedef | Kind::Const | Kind::Volatile | Kind::Restrict | Kind::TypeTag => {
                    id = ty.size_or_type
                }
                _ => return Ok(ty),
            }
        }
        bail!("kernel BTF: type chain too long at {id}")
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a BTF blob from (name, info, size_or_type, trailer words).
    pub(crate) fn blob(types: &[(&str, u32, u32, Vec<u32>)], extra_names: &[&str]) -> Vec<u8> {
        let mut strings = vec![0u8];
        let name_off = |n: &str, strings: &mut Vec<u8>| -> u32 {
            if n.is_empty() {
                return 0;
            }
            let o = strings.len() as u32;
            strings.extend_from_slice(n.as_bytes());
            strings.push(0);
            o
        };
        let mut ty = Vec::new();
        for (name, info, st, trailer) in types {
            let o = name_off(name, &mut strings);
            for w in [o, *info, *st].iter().chain(trailer) {
                ty.extend_from_slice(&w.to_ne_bytes());
            }
        }
        for n in extra_names {
            name_off(n, &mut strings);
        }
        let mut out = Vec::new();
        out.extend_from_slice(&MAGIC.to_ne_bytes());
        out.extend_from_slice(&[1, 0]);
        for w in [
            24u32,
            0,
            ty.len() as u32,
            ty.len() as u32,
            strings.len() as u32,
        ] {
            out.extend_from_slice(&w.to_ne_bytes());
        }
        out.extend_from_slice(&ty);
        out.extend_from_slice(&strings);
        out
    }

    pub(crate) fn info(kind: Kind, vlen: u32, kind_flag: bool) -> u32 {
        ((kind_flag as u32) << 31) | ((kind as u32) << 24) | vlen
    }

    #[test]
    fn reads_structs_members_and_prototypes() {
        // Names of members are looked up by string offset; the blob builder
        // appends names in order, so offsets are computed the same way here.
        let mut strings = vec![0u8];
        let mut off = |n: &str| {
            let o = strings.len() as u32;
            strings.extend_from_slice(n.as_bytes());
            strings.push(0);
            o
        };
        // Type names are interned first by the builder; member names after.
        let _int = off("int");
        let _s = off("foo");
        let _t = off("foo_t");
        let _f = off("put_foo");
        let a = off("a");
        let b = off("b");
        let types = vec![
            ("int", info(Kind::Int, 0, false), 4, vec![32]),
            (
                "foo",
                info(Kind::Struct, 2, true),
                16,
                vec![a, 1, 0, b, 1, (3 << 24) | 64],
            ),
            ("foo_t", info(Kind::Typedef, 0, false), 2, vec![]),
            ("", info(Kind::Ptr, 0, false), 3, vec![]),
            ("", info(Kind::FuncProto, 1, false), 1, vec![0, 4]),
            ("put_foo", info(Kind::Func, 0, false), 5, vec![]),
        ];
        let btf = Btf::parse(blob(&types, &["a", "b"])).unwrap();
        let foo = btf.by_name("foo").next().unwrap();
        assert_eq!((foo.id, foo.kind, foo.size_or_type), (2, Kind::Struct, 16));
        let m = btf.members(&foo);
        assert_eq!(m[0].name, "a");
        assert_eq!((m[1].name.as_ref(), m[1].bit_offset), ("b", 64));
        assert_eq!(btf.by_name("fo").count(), 0);
        let func = btf.by_name("put_foo").next().unwrap();
        let proto = btf.ty(func.size_or_type).unwrap();
        let param = btf.strip(btf.params(&proto)[0]).unwrap();
        assert_eq!(param.kind, Kind::Ptr);
        assert_eq!(btf.strip(param.size_or_type).unwrap().id, 2);
    }

    #[test]
    fn rejects_garbage() {
        assert!(Btf::parse(vec![0; 10]).is_err());
        assert!(Btf::parse(vec![0; 64]).is_err());
        let mut b = blob(&[("x", info(Kind::Struct, 5, false), 0, vec![])], &[]);
        assert!(Btf::parse(b.clone()).is_err(), "members past the end");
        b = blob(&[("x", 31 << 24, 0, vec![])], &[]);
        assert!(Btf::parse(b).is_err(), "unknown kind");
    }
}
