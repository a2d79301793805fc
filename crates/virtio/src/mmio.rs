//! The virtio-mmio register file, version 2 (virtio 1.2, 4.2.2).
//!
//! [`Transport`] holds what the driver wrote: features, status, each
//! queue's size and addresses. A read answers from it, a write updates it
//! and returns an [`Event`] for the device when something happened that
//! the device must act on (a notification, a reset, a queue going live).
//! Registers are 32 bits wide; the device's configuration space at 0x100
//! takes any of 1, 2 or 4 bytes. Writes that are not allowed in the
//! current state (queue setup while the queue is live, features after
//! FEATURES_OK) are ignored, as the spec says a device may.

use crate::{feature, status};

pub const MAGIC: u32 = 0x7472_6976; // "virt"
pub const VERSION: u32 = 2;
/// VendorID: 0x424b, "BK" for Bulkhead (drivers only print it).
pub const VENDOR: u32 = 0x424b;
/// Bytes of one device's register page.
pub const SIZE: u64 = 0x200;
pub const CONFIG: u64 = 0x100;

/// Register offsets.
pub mod reg {
    pub const MAGIC: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const DEVICE_ID: u64 = 0x008;
    pub const VENDOR_ID: u64 = 0x00c;
    pub const DEVICE_FEATURES: u64 = 0x010;
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    pub const QUEUE_SEL: u64 = 0x030;
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const QUEUE_NOTIFY: u64 = 0x050;
    pub const INTERRUPT_STATUS: u64 = 0x060;
    pub const INTERRUPT_ACK: u64 = 0x064;
    pub const STATUS: u64 = 0x070;
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    pub const QUEUE_DRIVER_LOW: u64 = 0x090;
    pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
    pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
    pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
    pub const SHM_LEN_LOW: u64 = 0x0b0;
    pub const SHM_LEN_HIGH: u64 = 0x0b4;
    pub const CONFIG_GENERATION: u64 = 0x0fc;
}

/// InterruptStatus bits.
pub const INT_VRING: u32 = 1;
pub const INT_CONFIG: u32 = 2;

/// What the driver set up for one queue.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueRegs {
    pub num: u16,
    pub ready: bool,
    pub desc: u64,
    pub driver: u64,
    pub device: u64,
}

impl QueueRegs {
    pub fn layout(&self) -> crate::queue::Layout {
        crate::queue::Layout {
            size: self.num,
            desc: self.desc,
            avail: self.driver,
            used: self.device,
        }
    }
}

/// Something the device must act on after a register write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// The driver notified queue `.0` (already checked to exist).
    Notify(u16),
    /// The driver wrote 0 to Status: every queue and feature is forgotten.
    Reset,
    /// Queue `.0` was made ready: the device checks its layout.
    QueueReady(u16),
    /// The interrupt status changed (an acknowledgement).
    Interrupt,
}

/// The register state of one virtio-mmio device with `Q` queues.
#[derive(Clone, Debug)]
pub struct Transport<const Q: usize> {
    pub device_id: u32,
    /// What the device offers; `VERSION_1` is always added.
    pub device_features: u64,
    pub driver_features: u64,
    dev_sel: u32,
    drv_sel: u32,
    queue_sel: u32,
    pub queues: [QueueRegs; Q],
    pub status: u32,
    pub interrupt_status: u32,
    pub config_generation: u32,
    pub queue_num_max: u16,
}

/// A transport's registers apart from its queues, as [`crate::state`]
/// saves them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Saved {
    pub device_id: u32,
    pub device_features: u64,
    pub queue_num_max: u16,
    pub driver_features: u64,
    /// DeviceFeaturesSel, DriverFeaturesSel, QueueSel.
    pub selectors: [u32; 3],
    pub status: u32,
    pub interrupt_status: u32,
    pub config_generation: u32,
}

impl<const Q: usize> Transport<Q> {
    pub fn new(device_id: u32, features: u64, queue_num_max: u16) -> Self {
        Transport {
            device_id,
            device_features: features | feature::VERSION_1,
            driver_features: 0,
            dev_sel: 0,
            drv_sel: 0,
            queue_sel: 0,
            queues: [QueueRegs::default(); Q],
            status: 0,
            interrupt_status: 0,
            config_generation: 0,
            queue_num_max,
        }
    }

    /// Its registers apart from the queues.
    pub fn saved(&self) -> Saved {
        Saved {
            device_id: self.device_id,
            device_features: self.device_features,
            queue_num_max: self.queue_num_max,
            driver_features: self.driver_features,
            selectors: [self.dev_sel, self.drv_sel, self.queue_sel],
            status: self.status,
            interrupt_status: self.interrupt_status,
            config_generation: self.config_generation,
        }
    }

    /// A transport with saved registers and queues (checked by the caller).
    pub fn from_saved(s: Saved, queues: [QueueRegs; Q]) -> Self {
        let [dev_sel, drv_sel, queue_sel] = s.selectors;
        Transport {
            device_id: s.device_id,
            device_features: s.device_features,
            driver_features: s.driver_features,
            dev_sel,
            drv_sel,
            queue_sel,
            queues,
            status: s.status,
            interrupt_status: s.interrupt_status,
            config_generation: s.config_generation,
            queue_num_max: s.queue_num_max,
        }
    }

    /// Back to the state after power-on (Status 0 written).
    pub fn reset(&mut self) {
        *self = Transport::new(self.device_id, self.device_features, self.queue_num_max);
    }

    /// Features both sides agreed on, once FEATURES_OK stands.
    pub fn negotiated(&self) -> u64 {
        if self.status & status::FEATURES_OK != 0 {
            self.driver_features
        } else {
            0
        }
    }

    /// The driver is running the device and it has not failed.
    pub fn live(&self) -> bool {
        self.status & status::DRIVER_OK != 0 && self.status & status::DEVICE_NEEDS_RESET == 0
    }

    /// The device gives up until the driver resets it, and tells the
    /// driver with a configuration-change interrupt (2.1.2).
    pub fn needs_reset(&mut self) {
        if self.status & status::DRIVER_OK != 0 {
            self.status |= status::DEVICE_NEEDS_RESET;
            self.interrupt_status |= INT_CONFIG;
        }
    }

    /// Queue `q` was just made ready ([`Event::QueueReady`]): the device's
    /// side of it if the layout the driver wrote is usable (in RAM,
    /// aligned, a power of two up to the maximum), with event idx if it was
    /// negotiated; otherwise the ready bit is taken back, so the driver
    /// reads QueueReady as 0.
    pub fn take_ready(
        &mut self,
        q: usize,
        mem: &impl crate::GuestMemory,
    ) -> Option<crate::queue::Queue> {
        let regs = self.queues.get_mut(q)?;
        let layout = regs.layout();
        if layout.check(mem).is_err() {
            regs.ready = false;
            return None;
        }
        let event_idx = self.negotiated() & feature::RING_EVENT_IDX != 0;
        Some(crate::queue::Queue::new(layout, event_idx))
    }

    fn queue(&self) -> Option<&QueueRegs> {
        self.queues.get(self.queue_sel as usize)
    }

    /// A register read; `config` is the device's configuration space.
    /// `None` for an access of a size or at an offset that is not a
    /// register (the caller injects an abort).
    pub fn read(&self, off: u64, size: u8, config: &[u8]) -> Option<u32> {
        if off >= CONFIG {
            return read_config(config, off - CONFIG, size);
        }
        if size != 4 || !off.is_multiple_of(4) {
            return None;
        }
        let q = self.queue();
        let word = |v: u64, high: bool| if high { (v >> 32) as u32 } else { v as u32 };
        Some(match off {
            reg::MAGIC => MAGIC,
            reg::VERSION => VERSION,
            reg::DEVICE_ID => self.device_id,
            reg::VENDOR_ID => VENDOR,
            reg::DEVICE_FEATURES => match self.dev_sel {
                0 => self.device_features as u32,
                1 => (self.device_features >> 32) as u32,
                _ => 0,
            },
            reg::QUEUE_NUM_MAX => q.map_or(0, |_| u32::from(self.queue_num_max)),
            reg::QUEUE_NUM => q.map_or(0, |q| u32::from(q.num)),
            reg::QUEUE_READY => q.map_or(0, |q| u32::from(q.ready)),
            reg::INTERRUPT_STATUS => self.interrupt_status,
            reg::STATUS => self.status,
            reg::QUEUE_DESC_LOW | reg::QUEUE_DESC_HIGH => {
                q.map_or(0, |q| word(q.desc, off == reg::QUEUE_DESC_HIGH))
            }
            reg::QUEUE_DRIVER_LOW | reg::QUEUE_DRIVER_HIGH => {
                q.map_or(0, |q| word(q.driver, off == reg::QUEUE_DRIVER_HIGH))
            }
            reg::QUEUE_DEVICE_LOW | reg::QUEUE_DEVICE_HIGH => {
                q.map_or(0, |q| word(q.device, off == reg::QUEUE_DEVICE_HIGH))
            }
            // No shared memory regions: a length of -1 says so (4.2.2).
            reg::SHM_LEN_LOW | reg::SHM_LEN_HIGH => u32::MAX,
            reg::CONFIG_GENERATION => self.config_generation,
            _ => 0,
        })
    }

    /// A register write. `Err(())` for an access that is not a register;
    /// `Ok(None)` when nothing more is to be done.
    #[allow(clippy::result_unit_err)]
    pub fn write(&mut self, off: u64, size: u8, value: u32) -> Result<Option<Event>, ()> {
        if off >= CONFIG {
            // Our devices' configuration spaces are read-only.
            return Ok(None);
        }
        if size != 4 || !off.is_multiple_of(4) {
            return Err(());
        }
        let setup_open = self.status & status::FEATURES_OK == 0;
        let sel = self.queue_sel as usize;
        let queue_idle = self.queues.get(sel).is_some_and(|q| !q.ready);
        let set_half = |v: &mut u64, high: bool| {
            *v = if high {
                (*v & 0xffff_ffff) | (u64::from(value) << 32)
            } else {
                (*v & !0xffff_ffff) | u64::from(value)
            }
        };
        match off {
            reg::DEVICE_FEATURES_SEL => self.dev_sel = value,
            reg::DRIVER_FEATURES_SEL => self.drv_sel = value,
            reg::DRIVER_FEATURES if setup_open => match self.drv_sel {
                0 => set_half(&mut self.driver_features, false),
                1 => set_half(&mut self.driver_features, true),
                _ => {}
            },
            reg::QUEUE_SEL => self.queue_sel = value,
            reg::QUEUE_NUM if queue_idle => {
                if let Some(q) = self.queues.get_mut(sel) {
                    q.num = value.min(u32::from(u16::MAX)) as u16;
                }
            }
            reg::QUEUE_DESC_LOW | reg::QUEUE_DESC_HIGH if queue_idle => {
                if let Some(q) = self.queues.get_mut(sel) {
                    set_half(&mut q.desc, off == reg::QUEUE_DESC_HIGH);
                }
            }
            reg::QUEUE_DRIVER_LOW | reg::QUEUE_DRIVER_HIGH if queue_idle => {
                if let Some(q) = self.queues.get_mut(sel) {
                    set_half(&mut q.driver, off == reg::QUEUE_DRIVER_HIGH);
                }
            }
            reg::QUEUE_DEVICE_LOW | reg::QUEUE_DEVICE_HIGH if queue_idle => {
                if let Some(q) = self.queues.get_mut(sel) {
                    set_half(&mut q.device, off == reg::QUEUE_DEVICE_HIGH);
                }
            }
            reg::QUEUE_READY => {
                let Some(q) = self.queues.get_mut(sel) else {
                    return Ok(None);
                };
                let ready = value & 1 != 0;
                if ready == q.ready {
                    return Ok(None);
                }
                q.ready = ready;
                if ready {
                    return Ok(Some(Event::QueueReady(sel as u16)));
                }
            }
            reg::QUEUE_NOTIFY => {
                // Without VIRTIO_F_NOTIFICATION_DATA the value is the queue.
                let q = value as usize;
                if q < Q && self.queues[q].ready && self.live() {
                    return Ok(Some(Event::Notify(q as u16)));
                }
            }
            reg::INTERRUPT_ACK => {
                self.interrupt_status &= !value;
                return Ok(Some(Event::Interrupt));
            }
            reg::STATUS => return Ok(self.write_status(value)),
            _ => {}
        }
        Ok(None)
    }

    fn write_status(&mut self, value: u32) -> Option<Event> {
        if value == 0 {
            self.reset();
            return Some(Event::Reset);
        }
        // The driver only adds bits (3.1.1); NEEDS_RESET is the device's.
        let mut new = (self.status | value) & !status::DEVICE_NEEDS_RESET
            | (self.status & status::DEVICE_NEEDS_RESET);
        if value & status::FEATURES_OK != 0 && self.status & status::FEATURES_OK == 0 {
            let f = self.driver_features;
            // Only features we offered, and never a legacy device.
            if f & !self.device_features != 0 || f & feature::VERSION_1 == 0 {
                new &= !status::FEATURES_OK;
            }
        }
        self.status = new;
        None
    }
}

/// A little-endian read of 1, 2 or 4 bytes from a configuration space;
/// reads past its end are zero.
fn read_config(config: &[u8], off: u64, size: u8) -> Option<u32> {
    if !matches!(size, 1 | 2 | 4) || !off.is_multiple_of(u64::from(size)) {
        return None;
    }
    let mut v = 0u32;
    for i in (0..u64::from(size)).rev() {
        let b = usize::try_from(off + i)
            .ok()
            .and_then(|o| config.get(o))
            .copied()
            .unwrap_or(0);
        v = v << 8 | u32::from(b);
    }
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t() -> Transport<1> {
        Transport::new(2, 1 << 9, 256)
    }

    #[test]
    fn identifies_as_a_version_2_device() {
        let t = t();
        assert_eq!(t.read(reg::MAGIC, 4, &[]), Some(MAGIC));
        assert_eq!(t.read(reg::VERSION, 4, &[]), Some(2));
        assert_eq!(t.read(reg::DEVICE_ID, 4, &[]), Some(2));
        assert_eq!(t.read(reg::MAGIC, 2, &[]), None, "registers are 32-bit");
        assert_eq!(t.read(reg::MAGIC + 1, 4, &[]), None);
    }

    #[test]
    fn feature_negotiation_refuses_what_was_not_offered() {
        let mut t = t();
        t.write(reg::DEVICE_FEATURES_SEL, 4, 1).unwrap();
        assert_eq!(t.read(reg::DEVICE_FEATURES, 4, &[]), Some(1), "VERSION_1");
        t.write(reg::STATUS, 4, status::ACKNOWLEDGE | status::DRIVER)
            .unwrap();
        // Ask for bit 3, never offered.
        t.write(reg::DRIVER_FEATURES_SEL, 4, 0).unwrap();
        t.write(reg::DRIVER_FEATURES, 4, 1 << 3).unwrap();
        t.write(reg::DRIVER_FEATURES_SEL, 4, 1).unwrap();
        t.write(reg::DRIVER_FEATURES, 4, 1).unwrap();
        t.write(reg::STATUS, 4, status::FEATURES_OK).unwrap();
        assert_eq!(t.status & status::FEATURES_OK, 0);
        // Legacy (no VERSION_1) is refused too.
        t.write(reg::DRIVER_FEATURES_SEL, 4, 0).unwrap();
        t.write(reg::DRIVER_FEATURES, 4, 1 << 9).unwrap();
        t.write(reg::DRIVER_FEATURES_SEL, 4, 1).unwrap();
        t.write(reg::DRIVER_FEATURES, 4, 0).unwrap();
        t.write(reg::STATUS, 4, status::FEATURES_OK).unwrap();
        assert_eq!(t.status & status::FEATURES_OK, 0);
        t.write(reg::DRIVER_FEATURES, 4, 1).unwrap();
        t.write(reg::STATUS, 4, status::FEATURES_OK).unwrap();
        assert_ne!(t.status & status::FEATURES_OK, 0);
        assert_eq!(t.negotiated(), (1 << 9) | feature::VERSION_1);
        // Features are fixed once accepted.
        t.write(reg::DRIVER_FEATURES, 4, 0).unwrap();
        assert_eq!(t.negotiated(), (1 << 9) | feature::VERSION_1);
    }

    #[test]
    fn queue_setup_is_frozen_while_the_queue_is_live() {
        let mut t = t();
        t.write(reg::QUEUE_NUM, 4, 128).unwrap();
        t.write(reg::QUEUE_DESC_LOW, 4, 0x1000).unwrap();
        t.write(reg::QUEUE_DESC_HIGH, 4, 0x1).unwrap();
        assert_eq!(t.queues[0].desc, 0x1_0000_1000);
        assert_eq!(
            t.write(reg::QUEUE_READY, 4, 1),
            Ok(Some(Event::QueueReady(0)))
        );
        t.write(reg::QUEUE_DESC_LOW, 4, 0x2000).unwrap();
        t.write(reg::QUEUE_NUM, 4, 4).unwrap();
        assert_eq!((t.queues[0].desc, t.queues[0].num), (0x1_0000_1000, 128));
        // A queue that does not exist reads as absent and ignores writes.
        t.write(reg::QUEUE_SEL, 4, 7).unwrap();
        assert_eq!(t.read(reg::QUEUE_NUM_MAX, 4, &[]), Some(0));
        assert_eq!(t.write(reg::QUEUE_READY, 4, 1), Ok(None));
    }

    #[test]
    fn notify_only_reaches_a_live_device_and_reset_forgets_everything() {
        let mut t = t();
        t.write(reg::QUEUE_READY, 4, 1).unwrap();
        assert_eq!(
            t.write(reg::QUEUE_NOTIFY, 4, 0),
            Ok(None),
            "not DRIVER_OK yet"
        );
        t.write(reg::STATUS, 4, status::DRIVER_OK).unwrap();
        assert_eq!(t.write(reg::QUEUE_NOTIFY, 4, 0), Ok(Some(Event::Notify(0))));
        assert_eq!(t.write(reg::QUEUE_NOTIFY, 4, 1), Ok(None));
        t.needs_reset();
        assert_eq!(t.interrupt_status, INT_CONFIG);
        assert_eq!(
            t.write(reg::QUEUE_NOTIFY, 4, 0),
            Ok(None),
            "failed until reset"
        );
        // The driver cannot clear NEEDS_RESET by writing status...
        t.write(reg::STATUS, 4, status::DRIVER).unwrap();
        assert_ne!(t.status & status::DEVICE_NEEDS_RESET, 0);
        // ...only by resetting.
        assert_eq!(t.write(reg::STATUS, 4, 0), Ok(Some(Event::Reset)));
        assert_eq!((t.status, t.queues[0].ready), (0, false));
        t.interrupt_status = INT_VRING | INT_CONFIG;
        t.write(reg::INTERRUPT_ACK, 4, INT_VRING).unwrap();
        assert_eq!(t.interrupt_status, INT_CONFIG);
    }

    #[test]
    fn config_space_reads_any_width_little_endian() {
        let t = t();
        let cfg = [0x11, 0x22, 0x33, 0x44, 0x55];
        assert_eq!(t.read(CONFIG, 4, &cfg), Some(0x4433_2211));
        assert_eq!(t.read(CONFIG + 2, 2, &cfg), Some(0x4433));
        assert_eq!(t.read(CONFIG + 4, 1, &cfg), Some(0x55));
        assert_eq!(
            t.read(CONFIG + 4, 4, &cfg),
            Some(0x55),
            "past the end is zero"
        );
        assert_eq!(t.read(CONFIG + 1, 2, &cfg), None, "misaligned");
        assert_eq!(t.read(CONFIG, 8, &cfg), None);
        assert_eq!(t.read(u64::MAX - 3, 4, &cfg), Some(0));
    }
}
