//! The running kernel's struct layout, from its BTF (`/sys/kernel/btf/vmlinux`): the offsets the
//! kernel programs need to walk from an fd to its socket ([`KernelOffsets`]).
//!
//! Rust eBPF has no CO-RE relocations, so the programs take the offsets as a load-time global.
//! Only the little BTF needed is parsed here: the type section's records (to skip them by
//! kind), and struct members by name, through anonymous structs and unions. (aya-obj parses BTF
//! too, but keeps member offsets to itself.)

use std::collections::HashMap;

use sockwatch_common::KernelOffsets;

const VMLINUX: &str = "/sys/kernel/btf/vmlinux";
const MAGIC: u16 = 0xeb9f;

/// Why the offsets are not known; the programs then leave socket identities at 0.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BtfError {
    #[error("cannot read {VMLINUX}: {0} (a kernel without CONFIG_DEBUG_INFO_BTF)")]
    Unreadable(String),
    #[error("{VMLINUX} is not BTF: {0}")]
    Malformed(&'static str),
    #[error("the kernel's BTF has no {0}")]
    Missing(String),
}

const STRUCT: u32 = 4;
const UNION: u32 = 5;

/// One `struct` or `union`: its members as (name offset, type id, bit offset).
struct Composite {
    members: Vec<(u32, u32, u32)>,
}

/// The parsed parts of a BTF blob.
pub struct Btf<'a> {
    strings: &'a [u8],
    /// Structs and unions by type id.
    composites: HashMap<u32, Composite>,
    /// Struct ids by name (the first one of each name).
    structs: HashMap<&'a str, u32>,
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

impl<'a> Btf<'a> {
    pub fn parse(bytes: &'a [u8]) -> Result<Self, BtfError> {
        let bad = BtfError::Malformed;
        let magic = u16::from_le_bytes([
            *bytes.first().ok_or(bad("empty"))?,
            *bytes.get(1).ok_or(bad("short"))?,
        ]);
        if magic != MAGIC {
            return Err(bad("wrong magic (or not little-endian)"));
        }
        let header = |at| u32_at(bytes, at).ok_or(bad("short header"));
        let hdr_len = header(4)? as usize;
        let (type_off, type_len) = (header(8)? as usize, header(12)? as usize);
        let (str_off, str_len) = (header(16)? as usize, header(20)? as usize);
        let types = bytes
            .get(hdr_len + type_off..hdr_len + type_off + type_len)
            .ok_or(bad("type section out of bounds"))?;
        let strings = bytes
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .ok_or(bad("string section out of bounds"))?;
        let mut btf = Self {
            strings,
            composites: HashMap::new(),
            structs: HashMap::new(),
        };
        let (mut at, mut id) = (0usize, 1u32);
        while at < types.len() {
            let word = |n: usize| u32_at(types, at + 4 * n).ok_or(bad("truncated type"));
            let (name_off, info) = (word(0)?, word(1)?);
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let bitfields = info >> 31 == 1;
            at += 12;
            let extra = match kind {
                1 | 14 | 17 => 4,
                3 => 12,
                STRUCT | UNION | 15 | 19 => 12 * vlen,
                6 | 13 => 8 * vlen,
                2 | 7..=12 | 16 | 18 => 0,
                _ => return Err(bad("unknown type kind")),
            };
            if kind == STRUCT || kind == UNION {
                let mut members = Vec::with_capacity(vlen);
                for m in 0..vlen {
                    let field = |n: usize| u32_at(types, at + 12 * m + 4 * n).ok_or(bad("member"));
                    let offset = field(2)?;
                    // With the kind flag, the top byte is a bitfield's size.
                    let bits = if bitfields {
                        offset & 0x00ff_ffff
                    } else {
                        offset
                    };
                    members.push((field(0)?, field(1)?, bits));
                }
                if kind == STRUCT {
                    let name = btf.name(name_off);
                    if !name.is_empty() {
                        btf.structs.entry(name).or_insert(id);
                    }
                }
                btf.composites.insert(id, Composite { members });
            }
            at += extra;
            id += 1;
        }
        Ok(btf)
    }

    fn name(&self, offset: u32) -> &'a str {
        let rest = self.strings.get(offset as usize..).unwrap_or_default();
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).unwrap_or_default()
    }

    /// Byte offset of `member` in `struct name`, looking through anonymous structs and unions.
    pub fn offset(&self, name: &str, member: &str) -> Result<u32, BtfError> {
        let missing = || BtfError::Missing(format!("struct {name}.{member}"));
        let id = *self.structs.get(name).ok_or_else(missing)?;
        let bits = self.member_bits(id, member, 0).ok_or_else(missing)?;
        Ok(bits / 8)
    }

    fn member_bits(&self, id: u32, member: &str, depth: u32) -> Option<u32> {
        // Anonymous nesting is shallow in practice; the bound keeps a malformed blob finite.
        if depth > 8 {
            return None;
        }
        let composite = self.composites.get(&id)?;
        for &(name_off, type_id, bits) in &composite.members {
            if name_off == 0 {
                if let Some(inner) = self.member_bits(type_id, member, depth + 1) {
                    return Some(bits + inner);
                }
            } else if self.name(name_off) == member {
                return Some(bits);
            }
        }
        None
    }

    /// The offsets the fd-to-socket walk needs.
    pub fn kernel_offsets(&self) -> Result<KernelOffsets, BtfError> {
        // `file_ref_t f_ref` replaced `atomic_long_t f_count` in 6.13; both lead with the count.
        let (file_count, file_ref_style) = match self.offset("file", "f_ref") {
            Ok(offset) => (offset, 1),
            Err(_) => (self.offset("file", "f_count")?, 0),
        };
        let common = self.offset("sock", "__sk_common")?;
        let sock_common = |member: &str| -> Result<u32, BtfError> {
            Ok(common + self.offset("sock_common", member)?)
        };
        Ok(KernelOffsets {
            file_count,
            file_ref_style,
            task_files: self.offset("task_struct", "files")?,
            files_fdt: self.offset("files_struct", "fdt")?,
            fdtable_max_fds: self.offset("fdtable", "max_fds")?,
            fdtable_fd: self.offset("fdtable", "fd")?,
            file_private_data: self.offset("file", "private_data")?,
            file_inode: self.offset("file", "f_inode")?,
            inode_ino: self.offset("inode", "i_ino")?,
            socket_sk: self.offset("socket", "sk")?,
            sock_socket: self.offset("sock", "sk_socket")?,
            socket_file: self.offset("socket", "file")?,
            task_mm: self.offset("task_struct", "mm")?,
            task_flags: self.offset("task_struct", "flags")?,
            // `sock` leads with its `sock_common`, whose addresses and ports are in anonymous
            // unions.
            sock_num: sock_common("skc_num")?,
            sock_daddr: sock_common("skc_daddr")?,
            sock_dport: sock_common("skc_dport")?,
            sock_family: sock_common("skc_family")?,
            sock_v6_daddr: sock_common("skc_v6_daddr")?,
            sock_err: self.offset("sock", "sk_err")?,
            file_flags: self.offset("file", "f_flags")?,
            files_next_fd: self.offset("files_struct", "next_fd")?,
            valid: 1,
        })
    }
}

/// The running kernel's offsets.
pub fn kernel_offsets() -> Result<KernelOffsets, BtfError> {
    let bytes = std::fs::read(VMLINUX).map_err(|e| BtfError::Unreadable(e.to_string()))?;
    Btf::parse(&bytes)?.kernel_offsets()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A member: (name, type id, bit offset).
    type Member<'a> = (&'a str, u32, u32);

    /// A BTF blob: an int as type 1, then `types` as (name, kind, members).
    fn blob(types: &[(&str, u32, &[Member])]) -> Vec<u8> {
        let mut strings = vec![0u8];
        let mut intern = |s: &str| -> u32 {
            if s.is_empty() {
                return 0;
            }
            let at = strings.len() as u32;
            strings.extend_from_slice(s.as_bytes());
            strings.push(0);
            at
        };
        let mut section = Vec::new();
        // Type 1: an int, to be skipped by its kind's size.
        for word in [intern("int"), 1 << 24, 4, 32] {
            section.extend_from_slice(&word.to_le_bytes());
        }
        for (name, kind, members) in types {
            let info = (kind << 24) | members.len() as u32;
            for word in [intern(name), info, 64] {
                section.extend_from_slice(&word.to_le_bytes());
            }
            for (member, type_id, bits) in *members {
                for word in [intern(member), *type_id, *bits] {
                    section.extend_from_slice(&word.to_le_bytes());
                }
            }
        }
        let mut out = Vec::new();
        out.extend_from_slice(&MAGIC.to_le_bytes());
        out.extend_from_slice(&[1, 0]);
        for word in [
            24u32,
            0,
            section.len() as u32,
            section.len() as u32,
            strings.len() as u32,
        ] {
            out.extend_from_slice(&word.to_le_bytes());
        }
        out.extend_from_slice(&section);
        out.extend_from_slice(&strings);
        out
    }

    #[test]
    fn members_are_found_by_name_through_anonymous_unions() {
        // Type 2: an anonymous union holding `f_inode` at bit 0; type 3: struct file with
        // `private_data` at byte 8 and the union at byte 16.
        let bytes = blob(&[
            ("", UNION, &[("f_inode", 1, 0), ("other", 1, 0)]),
            ("file", STRUCT, &[("private_data", 1, 64), ("", 2, 128)]),
        ]);
        let btf = Btf::parse(&bytes).expect("parsed");
        assert_eq!(btf.offset("file", "private_data"), Ok(8));
        assert_eq!(btf.offset("file", "f_inode"), Ok(16));
        assert_eq!(
            btf.offset("file", "nothing"),
            Err(BtfError::Missing("struct file.nothing".into()))
        );
        assert!(btf.kernel_offsets().is_err(), "a blob without task_struct");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bytes in [&[][..], &[0x9f, 0xeb], &[0xff; 40], &blob(&[])[..30]] {
            let _ = Btf::parse(bytes).map(|btf| btf.kernel_offsets());
        }
        assert!(Btf::parse(&[1, 2, 3, 4]).is_err());
    }

    /// The running kernel's offsets agree with bpftool's reading of the same BTF.
    #[test]
    fn the_running_kernels_offsets_match_bpftool() {
        let offsets = kernel_offsets().expect("this kernel has BTF");
        let dump = std::process::Command::new("bpftool")
            .args(["btf", "dump", "file", VMLINUX])
            .output()
            .expect("bpftool runs (cargo xtask setup installs it)");
        let text = String::from_utf8_lossy(&dump.stdout);
        // `[N] STRUCT 'socket' size=...` followed by `\t'sk' type_id=... bits_offset=192`.
        let bits_of = |structure: &str, member: &str| -> u32 {
            let header = format!("STRUCT '{structure}' ");
            let start = text.find(&header).expect("struct in the dump");
            text[start..]
                .lines()
                .skip(1)
                .take_while(|line| line.starts_with('\t'))
                .find(|line| line.trim_start().starts_with(&format!("'{member}' ")))
                .and_then(|line| line.split("bits_offset=").nth(1))
                .and_then(|bits| bits.split_whitespace().next()?.parse().ok())
                .expect("member with a bit offset")
        };
        assert_eq!(offsets.socket_sk * 8, bits_of("socket", "sk"));
        assert_eq!(offsets.task_files * 8, bits_of("task_struct", "files"));
        assert_eq!(offsets.fdtable_fd * 8, bits_of("fdtable", "fd"));
        assert_eq!(offsets.inode_ino * 8, bits_of("inode", "i_ino"));
        assert_eq!(offsets.task_flags * 8, bits_of("task_struct", "flags"));
        // x86_64: skc_addrpair (daddr, then rcv_saddr) and skc_hash (4) lead, then skc_dport
        // (2), skc_num; skc_family after them.
        assert_eq!(offsets.sock_daddr, 0);
        assert_eq!(offsets.sock_dport, 12);
        assert_eq!(offsets.sock_num, 14);
        assert_eq!(offsets.sock_family, 16);
        assert_eq!(offsets.sock_err * 8, bits_of("sock", "sk_err"));
        assert_eq!(
            offsets.files_next_fd * 8,
            bits_of("files_struct", "next_fd")
        );
        assert_eq!(offsets.valid, 1);
    }
}
