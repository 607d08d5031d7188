//! A fault injector for the tests, not part of sockwatch: a tc classifier for a test's own
//! network namespace that drops every Nth TCP segment carrying data to one port, so the
//! sender retransmits for real (this kernel has no `sch_netem`). Attached at ingress, so the
//! segment was sent as far as the sender knows. Built with the programs
//! (one eBPF build), into an object of its own that sockwatch never loads.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    macros::{classifier, map},
    maps::Array,
    programs::TcContext,
};

/// `[0]`: drop every Nth data segment (0 drops none); `[1]`: the destination port it applies
/// to (host order).
#[map]
static FAULT_SETTINGS: Array<u32> = Array::with_max_entries(2, 0);

/// `[0]`: data segments to that port seen; `[1]`: of them, dropped.
#[map]
static FAULT_COUNTS: Array<u64> = Array::with_max_entries(2, 0);

const ETH_LEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const IPPROTO_TCP: u8 = 6;

#[classifier]
pub fn drop_every_nth(ctx: TcContext) -> i32 {
    if should_drop(&ctx).unwrap_or(false) {
        TC_ACT_SHOT
    } else {
        TC_ACT_OK
    }
}

fn setting(index: u32) -> u32 {
    FAULT_SETTINGS.get(index).copied().unwrap_or(0)
}

fn should_drop(ctx: &TcContext) -> Result<bool, i64> {
    let every = setting(0);
    if every == 0 {
        return Ok(false);
    }
    let ethertype = u16::from_be(ctx.load::<u16>(12)?);
    if ethertype != ETH_P_IP {
        return Ok(false);
    }
    let version_ihl: u8 = ctx.load(ETH_LEN)?;
    let ip_header = usize::from(version_ihl & 0x0f) * 4;
    let protocol: u8 = ctx.load(ETH_LEN + 9)?;
    if protocol != IPPROTO_TCP {
        return Ok(false);
    }
    // The packet's length, not the IP header's: a GSO packet on loopback may carry more than
    // an IP length can say (its tot_len is then 0).
    let total = (ctx.len() as usize).saturating_sub(ETH_LEN);
    let tcp = ETH_LEN + ip_header;
    let dport = u16::from_be(ctx.load::<u16>(tcp + 2)?);
    if u32::from(dport) != setting(1) {
        return Ok(false);
    }
    let offset: u8 = ctx.load(tcp + 12)?;
    let tcp_header = usize::from(offset >> 4) * 4;
    if total <= ip_header + tcp_header {
        // No data: a handshake segment or a bare ACK.
        return Ok(false);
    }
    let (Some(seen), Some(dropped)) = (FAULT_COUNTS.get_ptr_mut(0), FAULT_COUNTS.get_ptr_mut(1))
    else {
        return Ok(false);
    };
    // SAFETY: pointers into the array's values, valid for the program's run. Two CPUs may
    // race on the count; that only shifts which segment drops.
    unsafe {
        *seen += 1;
        if *seen % u64::from(every) != 0 {
            return Ok(false);
        }
        *dropped += 1;
    }
    Ok(true)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
