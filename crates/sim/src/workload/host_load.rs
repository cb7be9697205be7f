//! Host load figures (CPU, memory, disk, bandwidth), set so that the
//! fields that derive from one another agree.

use dfgraph_proto::common::v2::Host;

pub(super) fn set_cpu_percent(host: &mut Host, pct: f64) {
    if let Some(cpu) = host.cpu.as_mut() {
        cpu.percent = pct.clamp(0.0, 100.0);
        cpu.process_percent = (cpu.percent / 10.0).min(100.0);
    }
}

pub(super) fn set_mem_percent(host: &mut Host, pct: f64) {
    if let Some(mem) = host.memory.as_mut() {
        let pct = pct.clamp(1.0, 99.0);
        mem.used_percent = pct;
        mem.used = (mem.total as f64 * pct / 100.0) as u64;
        mem.available = mem.total.saturating_sub(mem.used);
        mem.free = mem.available / 2;
        mem.process_used_percent = pct / 20.0;
    }
}

pub(super) fn set_disk_percent(host: &mut Host, pct: f64) {
    if let Some(disk) = host.disk.as_mut() {
        disk.used_percent = pct;
        disk.used = (disk.total as f64 * pct / 100.0) as u64;
        disk.free = disk.total.saturating_sub(disk.used);
        disk.inodes_used = (disk.inodes_total as f64 * pct / 200.0) as u64;
        disk.inodes_free = disk.inodes_total.saturating_sub(disk.inodes_used);
        disk.inodes_used_percent = pct / 2.0;
    }
}

pub(super) fn set_bandwidth(host: &mut Host, rx: f64, tx: f64) {
    if let Some(net) = host.network.as_mut() {
        net.rx_bandwidth = Some((net.max_rx_bandwidth as f64 * rx) as u64);
        net.tx_bandwidth = Some((net.max_tx_bandwidth as f64 * tx) as u64);
    }
}
