//! PSCI / SMCCC / Bulkhead hypercalls: arbitrary function ids and arguments
//! from any vCPU (including ones the VM does not have), through [`decode`]
//! and the per-VM [`PowerState`] machine, mixed with the hypervisor's own
//! calls (boot, take_start, stop_all).
//!
//! Checks that every answer is one the specification allows for that call
//! (a PSCI status code, or the call's defined result), that CPU_ON only
//! starts an existing, off vCPU at a 4-byte aligned entry point inside guest
//! RAM, and that the machine's state agrees with a shadow kept here.
#![no_main]

use arbitrary::Arbitrary;
use bulkhead_psci::{
    affinity, decode, status, vcpu_from_mpidr, vcpu_mpidr, Action, Call, GuestRam, PowerState,
    VcpuPower, MAX_VCPUS, MIGRATE_INFO_TYPE_NOT_PRESENT, PSCI_VERSION_1_1, SMCCC_VERSION_1_1,
};
use bulkhead_types::VcpuId;
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Op {
    /// HVC/SMC with these registers from vCPU `caller`.
    Call {
        /// Function id: picked from the real ones or taken as is.
        fid: Fid,
        x1: u64,
        x2: u64,
        x3: u64,
        caller: u16,
        restart_count: u64,
    },
    /// CPU_ON of a vCPU of this VM, at an entry derived from RAM.
    CpuOn {
        target: u8,
        entry_offset: u32,
        caller: u8,
    },
    TakeStart(u16),
    Boot {
        entry: u64,
        context: u64,
    },
    StopAll,
    Mpidr {
        mpidr: u64,
        n: u16,
    },
}

#[derive(Arbitrary, Debug)]
enum Fid {
    Psci(u8),
    Psci64(u8),
    Smccc(u16),
    Vendor(u8),
    Any(u64),
}

impl Fid {
    fn x0(&self) -> u64 {
        match *self {
            Fid::Psci(n) => 0x8400_0000 | u64::from(n % 0x20),
            Fid::Psci64(n) => 0xC400_0000 | u64::from(n % 0x20),
            Fid::Smccc(n) => 0x8000_0000 | u64::from(n),
            Fid::Vendor(n) => 0xC600_0000 | u64::from(n % 4),
            Fid::Any(x) => x,
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Input {
    n_vcpus: u16,
    ram_base: u64,
    ram_size: u64,
    ops: Vec<Op>,
}

const STATUS: [i64; 10] = [
    status::SUCCESS,
    status::NOT_SUPPORTED,
    status::INVALID_PARAMETERS,
    status::DENIED,
    status::ALREADY_ON,
    status::ON_PENDING,
    status::INTERNAL_FAILURE,
    status::NOT_PRESENT,
    status::DISABLED,
    status::INVALID_ADDRESS,
];

fn is_status(v: u64) -> bool {
    STATUS.iter().any(|&s| s as u64 == v)
}

fn code(v: i64) -> Action {
    Action::Return(v as u64)
}

struct World {
    ps: PowerState,
    /// What every vCPU's state should be.
    shadow: [VcpuPower; MAX_VCPUS],
    n: u16,
    ram: GuestRam,
}

impl World {
    fn check_states(&self) {
        for v in 0..=MAX_VCPUS as u16 {
            let want = (v < self.n).then(|| self.shadow[usize::from(v)]);
            assert_eq!(self.ps.state(VcpuId(v)), want, "vcpu {v}");
        }
        assert_eq!(self.ps.state(VcpuId(u16::MAX)), None);
    }

    fn call(&mut self, x: [u64; 4], caller: u16, restart_count: u64) {
        let call = decode(x[0], x[1], x[2], x[3]);
        // SMCCC: the upper half of w0/x0 is not part of the function id.
        assert_eq!(call, decode(x[0] & 0xffff_ffff, x[1], x[2], x[3]));
        // SMC32 calls take 32-bit arguments.
        if x[0] & (1 << 30) == 0 {
            let w = |v: u64| v & 0xffff_ffff;
            assert_eq!(call, decode(x[0], w(x[1]), w(x[2]), w(x[3])));
        }
        let action = self
            .ps
            .handle(call, VcpuId(caller), self.ram, restart_count);
        self.check(call, caller, restart_count, action);
    }

    fn check(&mut self, call: Call, caller: u16, restart_count: u64, action: Action) {
        if caller >= self.n {
            assert_eq!(action, code(status::INTERNAL_FAILURE), "{call:?}");
            return;
        }
        match call {
            Call::Version => assert_eq!(action, Action::Return(PSCI_VERSION_1_1)),
            Call::SmcccVersion => assert_eq!(action, Action::Return(SMCCC_VERSION_1_1)),
            Call::MigrateInfoType => {
                assert_eq!(action, Action::Return(MIGRATE_INFO_TYPE_NOT_PRESENT))
            }
            Call::BulkheadVmInfo => assert_eq!(action, Action::Return(restart_count)),
            Call::BulkheadNull => assert_eq!(action, code(status::SUCCESS)),
            Call::SystemOff => assert_eq!(action, Action::SystemOff),
            Call::SystemReset => assert_eq!(action, Action::SystemReset),
            Call::Features { .. } => assert!(
                matches!(action, Action::Return(v) if v == 0 || v == status::NOT_SUPPORTED as u64),
                "{action:?}"
            ),
            // TIMER_LATE is answered by the hypervisor before the machine.
            Call::CpuSuspend
            | Call::SmcccArchFeatures { .. }
            | Call::BulkheadTimerLate
            | Call::Unknown { .. } => {
                assert_eq!(action, code(status::NOT_SUPPORTED), "{call:?}")
            }
            Call::CpuOff => {
                assert_eq!(action, Action::StopCaller);
                self.shadow[usize::from(caller)] = VcpuPower::Off;
            }
            Call::AffinityInfo { target, level } => {
                let want = match (level, vcpu_from_mpidr(target, self.n)) {
                    (0, Some(v)) => Action::Return(match self.shadow[v.index()] {
                        VcpuPower::On => affinity::ON,
                        VcpuPower::Off => affinity::OFF,
                        VcpuPower::OnPending { .. } => affinity::ON_PENDING,
                    }),
                    _ => code(status::INVALID_PARAMETERS),
                };
                assert_eq!(action, want, "{call:?}");
            }
            Call::CpuOn {
                target,
                entry,
                context,
            } => match action {
                Action::StartVcpu {
                    vcpu,
                    entry: e,
                    context: c,
                } => {
                    assert_eq!((e, c), (entry, context));
                    assert_eq!(vcpu_from_mpidr(target, self.n), Some(vcpu));
                    let slot = &mut self.shadow[vcpu.index()];
                    assert_eq!(
                        *slot,
                        VcpuPower::Off,
                        "CPU_ON started a vCPU that was not off"
                    );
                    let off = entry.checked_sub(self.ram.base);
                    assert!(
                        off.is_some_and(|o| o < self.ram.size),
                        "entry {entry:#x} outside RAM"
                    );
                    assert_eq!(entry % 4, 0);
                    *slot = VcpuPower::OnPending { entry, context };
                }
                Action::Return(v) => {
                    assert!(is_status(v), "CPU_ON returned {v:#x}");
                    assert_ne!(v, 0, "CPU_ON success must start the vCPU");
                    if let Some(t) = vcpu_from_mpidr(target, self.n) {
                        let want = match self.shadow[t.index()] {
                            VcpuPower::On => status::ALREADY_ON,
                            VcpuPower::OnPending { .. } => status::ON_PENDING,
                            VcpuPower::Off => status::INVALID_ADDRESS,
                        };
                        assert_eq!(v, want as u64, "{call:?}");
                    } else {
                        assert_eq!(v, status::INVALID_PARAMETERS as u64);
                    }
                }
                other => panic!("CPU_ON answered {other:?}"),
            },
        }
    }
}

fuzz_target!(|input: Input| {
    let ram = GuestRam {
        base: input.ram_base,
        size: input.ram_size,
    };
    let mut w = World {
        ps: PowerState::new(input.n_vcpus),
        shadow: [VcpuPower::Off; MAX_VCPUS],
        n: input.n_vcpus.min(MAX_VCPUS as u16),
        ram,
    };
    assert_eq!(w.ps.n_vcpus(), w.n);
    w.check_states();
    for op in input.ops.iter().take(512) {
        match *op {
            Op::Call {
                ref fid,
                x1,
                x2,
                x3,
                caller,
                restart_count,
            } => w.call([fid.x0(), x1, x2, x3], caller, restart_count),
            Op::CpuOn {
                target,
                entry_offset,
                caller,
            } => {
                let x1 = vcpu_mpidr(u16::from(target % 10));
                let x2 = ram.base.wrapping_add(u64::from(entry_offset));
                w.call([0xC400_0003, x1, x2, 7], u16::from(caller % 10), 0);
            }
            Op::TakeStart(v) => {
                let got = w.ps.take_start(VcpuId(v));
                let want = match (v < w.n).then(|| w.shadow[usize::from(v)]) {
                    Some(VcpuPower::OnPending { entry, context }) => {
                        w.shadow[usize::from(v)] = VcpuPower::On;
                        Some((entry, context))
                    }
                    _ => None,
                };
                assert_eq!(got, want);
            }
            Op::Boot { entry, context } => {
                w.ps.boot(entry, context);
                w.shadow = [VcpuPower::Off; MAX_VCPUS];
                if w.n > 0 {
                    w.shadow[0] = VcpuPower::OnPending { entry, context };
                }
            }
            Op::StopAll => {
                w.ps.stop_all();
                w.shadow = [VcpuPower::Off; MAX_VCPUS];
            }
            Op::Mpidr { mpidr, n } => {
                if let Some(v) = vcpu_from_mpidr(mpidr, n) {
                    assert!(v.0 < n);
                    // Aff0 and Aff1 name the vCPU; Aff2 and Aff3 are zero.
                    assert_eq!(vcpu_mpidr(v.0), mpidr & 0xffff);
                    assert_eq!(mpidr & 0xff_00ff_0000, 0);
                }
                let index = (mpidr as u16) % 4096;
                let m = vcpu_mpidr(index);
                assert_eq!(vcpu_from_mpidr(m, n), (index < n).then_some(VcpuId(index)));
            }
        }
        w.check_states();
    }
});
