//! Container statistics for the Stats RPC: the task's cgroup counters read as containerd's cgroups library
//! reads them (`cgroup1.Stat(IgnoreNotExist)`, `cgroup2.Manager.Stat()`), packed in an Any whose type URL is
//! the proto full name (`io.containerd.cgroups.v1.Metrics` / `io.containerd.cgroups.v2.Metrics`), so that
//! containerd, ctr and the CRI decode them unchanged.
//!
//! A missing file is skipped, leaving its fields 0 (controller not mounted, kernel without swap accounting,
//! PSI or peak counters); a file that exists but does not parse is an error naming it.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::path::Path;

use protobuf::well_known_types::any::Any;
use protobuf::MessageField;

use crate::cgroup::Cgroup;
use crate::error::{Error, Result};
use crate::events::to_any;
use crate::protos::cgroups_v1::metrics as v1;
use crate::protos::cgroups_v2::metrics as v2;

/// cpuacct.stat counts USER_HZ ticks, which the kernel ABI fixes at 100 on every architecture (upstream
/// hard-codes 100 as well); v1 Metrics carry nanoseconds.
const NS_PER_TICK: u64 = 1_000_000_000 / 100;

/// The Metrics of the cgroup `cg`, packed for StatsResponse.stats.
pub fn metrics(cg: &Cgroup) -> Result<Any> {
    Ok(match cg {
        Cgroup::V2(dir) => to_any(&v2_metrics(dir)?),
        Cgroup::V1(_) => to_any(&v1_metrics(cg, Path::new("/proc/partitions"))?),
    })
}

/// Copies each counter of a flat-keyed file into the field of the same name (0 when the kernel lacks it).
macro_rules! copy_keys {
    ($raw:expr => $dst:expr; $($field:ident),+ $(,)?) => {
        $($dst.$field = get(&$raw, stringify!($field));)+
    };
}

// ---- cgroup v1 ----

/// `partitions` (/proc/partitions) names the block devices in blkio entries.
fn v1_metrics(cg: &Cgroup, partitions: &Path) -> Result<v1::Metrics> {
    // A controller whose directory is gone is not reported, as upstream's Load drops it.
    let dir = |ctl: &str| cg.dir(ctl).filter(|d| d.is_dir());
    let mut m = v1::Metrics::new();
    // Upstream always reports cpu with both submessages, whatever is mounted.
    let mut usage = v1::CPUUsage::new();
    if let Some(d) = dir("cpuacct") {
        usage.total = single(&d.join("cpuacct.usage"), 0)?.unwrap_or(0);
        let path = d.join("cpuacct.usage_percpu");
        if let Some(text) = read(&path)? {
            let per_cpu = text
                .split_whitespace()
                .map(|v| v.parse().map_err(|_| garbled(&path, v)));
            usage.per_cpu = per_cpu.collect::<Result<_>>()?;
        }
        let path = d.join("cpuacct.stat");
        if let Some(raw) = flat_keyed(&path)? {
            let ns = |k: &str| {
                let missing = || Error::Other(format!("no {k:?} in {}", path.display()));
                raw.get(k).map(|t| t.saturating_mul(NS_PER_TICK)).ok_or_else(missing)
            };
            usage.user = ns("user")?;
            usage.kernel = ns("system")?;
        }
    }
    let mut throttling = v1::Throttle::new();
    if let Some(d) = dir("cpu") {
        if let Some(raw) = flat_keyed(&d.join("cpu.stat"))? {
            throttling.periods = get(&raw, "nr_periods");
            throttling.throttled_periods = get(&raw, "nr_throttled");
            throttling.throttled_time = get(&raw, "throttled_time"); // ns
        }
    }
    m.cpu = MessageField::some(v1::CPUStat {
        usage: MessageField::some(usage),
        throttling: MessageField::some(throttling),
        ..Default::default()
    });
    if let Some(d) = dir("memory") {
        v1_memory(d, &mut m)?;
    }
    if let Some(d) = dir("pids") {
        // v1 reads a "max" (unlimited) limit as 0, unlike v2.
        if let Some(current) = single(&d.join("pids.current"), 0)? {
            let limit = single(&d.join("pids.max"), 0)?.unwrap_or(0);
            m.pids = MessageField::some(v1::PidsStat {
                current,
                limit,
                ..Default::default()
            });
        }
    }
    if let Some(d) = dir("blkio") {
        m.blkio = MessageField::some(v1_blkio(d, partitions)?);
    }
    if let Some(d) = dir("hugetlb") {
        for size in hugetlb_sizes(d, "usage_in_bytes")? {
            let f = |name: &str| Ok::<_, Error>(single(&d.join(format!("hugetlb.{size}.{name}")), 0)?.unwrap_or(0));
            m.hugetlb.push(v1::HugetlbStat {
                usage: f("usage_in_bytes")?,
                max: f("max_usage_in_bytes")?,
                failcnt: f("failcnt")?,
                pagesize: size,
                ..Default::default()
            });
        }
    }
    if let Some(d) = dir("rdma") {
        if let (Some(current), Some(limit)) = (rdma(&d.join("rdma.current"))?, rdma(&d.join("rdma.max"))?) {
            let entries = |v: Vec<(String, u32, u32)>| {
                v.into_iter()
                    .map(|(device, hca_handles, hca_objects)| v1::RdmaEntry {
                        device,
                        hca_handles,
                        hca_objects,
                        ..Default::default()
                    })
                    .collect()
            };
            m.rdma = MessageField::some(v1::RdmaStat {
                current: entries(current),
                limit: entries(limit),
                ..Default::default()
            });
        }
    }
    Ok(m)
}

fn v1_memory(dir: &Path, m: &mut v1::Metrics) -> Result<()> {
    if let Some(raw) = flat_keyed(&dir.join("memory.stat"))? {
        let mut s = v1::MemoryStat::new();
        copy_keys!(raw => s; cache, rss, rss_huge, mapped_file, dirty, writeback, inactive_anon, active_anon,
            inactive_file, active_file, unevictable, hierarchical_memory_limit, total_cache, total_rss,
            total_rss_huge, total_mapped_file, total_dirty, total_writeback, total_inactive_anon,
            total_active_anon, total_inactive_file, total_active_file, total_unevictable);
        // The proto spells these differently from memory.stat.
        s.pg_pg_in = get(&raw, "pgpgin");
        s.pg_pg_out = get(&raw, "pgpgout");
        s.pg_fault = get(&raw, "pgfault");
        s.pg_maj_fault = get(&raw, "pgmajfault");
        s.hierarchical_swap_limit = get(&raw, "hierarchical_memsw_limit");
        s.total_pg_pg_in = get(&raw, "total_pgpgin");
        s.total_pg_pg_out = get(&raw, "total_pgpgout");
        s.total_pg_fault = get(&raw, "total_pgfault");
        s.total_pg_maj_fault = get(&raw, "total_pgmajfault");
        let entry = |prefix: &str| -> Result<MessageField<v1::MemoryEntry>> {
            let f = |name: &str| Ok::<_, Error>(single(&dir.join(format!("{prefix}.{name}")), 0)?.unwrap_or(0));
            Ok(MessageField::some(v1::MemoryEntry {
                limit: f("limit_in_bytes")?,
                usage: f("usage_in_bytes")?,
                max: f("max_usage_in_bytes")?,
                failcnt: f("failcnt")?,
                ..Default::default()
            }))
        };
        s.usage = entry("memory")?;
        s.swap = entry("memory.memsw")?;
        s.kernel = entry("memory.kmem")?;
        s.kernel_tcp = entry("memory.kmem.tcp")?;
        m.memory = MessageField::some(s);
    }
    if let Some(raw) = flat_keyed(&dir.join("memory.oom_control"))? {
        let mut oom = v1::MemoryOomControl::new();
        copy_keys!(raw => oom; oom_kill_disable, under_oom, oom_kill);
        m.memory_oom_control = MessageField::some(oom);
    }
    Ok(())
}

fn v1_blkio(dir: &Path, partitions: &Path) -> Result<v1::BlkIOStat> {
    // major:minor -> /dev/<name>; the first name of a device wins.
    let mut devices = HashMap::new();
    for line in read(partitions)?.unwrap_or_default().lines() {
        if let [major, minor, _, name] = line.split_whitespace().collect::<Vec<_>>()[..] {
            if let (Ok(major), Ok(minor)) = (major.parse::<u64>(), minor.parse::<u64>()) {
                devices.entry((major, minor)).or_insert_with(|| format!("/dev/{name}"));
            }
        }
    }
    let entries = |name: &str| blkio_entries(&dir.join(format!("blkio.{name}")), &devices);
    let mut s = v1::BlkIOStat::new();
    // The CFQ scheduler's counters where the kernel has them (before 5.0) and they are not all empty;
    // otherwise, as upstream, the throttle counters, which every kernel keeps (not recursive despite the
    // field names).
    if dir.join("blkio.io_serviced_recursive").exists() {
        s.sectors_recursive = entries("sectors_recursive")?;
        s.io_service_bytes_recursive = entries("io_service_bytes_recursive")?;
        s.io_serviced_recursive = entries("io_serviced_recursive")?;
        s.io_queued_recursive = entries("io_queued_recursive")?;
        s.io_service_time_recursive = entries("io_service_time_recursive")?;
        s.io_wait_time_recursive = entries("io_wait_time_recursive")?;
        s.io_merged_recursive = entries("io_merged_recursive")?;
        s.io_time_recursive = entries("time_recursive")?;
        if s != v1::BlkIOStat::new() {
            return Ok(s);
        }
    }
    s.io_serviced_recursive = entries("throttle.io_serviced")?;
    s.io_service_bytes_recursive = entries("throttle.io_service_bytes")?;
    Ok(s)
}

/// Lines `8:0 Read 4096` (or `8:0 4096` for counters without operations), and a summary `Total N`.
fn blkio_entries(path: &Path, devices: &HashMap<(u64, u64), String>) -> Result<Vec<v1::BlkIOEntry>> {
    let mut out = Vec::new();
    for line in read(path)?.unwrap_or_default().lines() {
        let fields: Vec<&str> = line.split([' ', ':']).filter(|f| !f.is_empty()).collect();
        let (major, minor, op, value) = match fields[..] {
            [] | ["Total", _] => continue,
            [major, minor, value] => (major, minor, "", value),
            [major, minor, op, value] => (major, minor, op, value),
            _ => return Err(garbled(path, line)),
        };
        let num = |s: &str| s.parse::<u64>().map_err(|_| garbled(path, line));
        let (major, minor) = (num(major)?, num(minor)?);
        out.push(v1::BlkIOEntry {
            op: op.to_string(),
            device: devices.get(&(major, minor)).cloned().unwrap_or_default(),
            major,
            minor,
            value: num(value)?,
            ..Default::default()
        });
    }
    Ok(out)
}

// ---- cgroup v2 ----

fn v2_metrics(dir: &Path) -> Result<v2::Metrics> {
    // Upstream reports pids, cpu, memory, io and rdma even when their files are missing (all 0), and
    // reads "max" (unlimited) as u64::MAX.
    let one = |name: &str| Ok::<_, Error>(single(&dir.join(name), u64::MAX)?.unwrap_or(0));
    let mut m = v2::Metrics::new();
    m.pids = MessageField::some(v2::PidsStat {
        current: one("pids.current")?,
        limit: one("pids.max")?,
        ..Default::default()
    });

    // Microseconds, as in cpu.stat.
    let raw = flat_keyed(&dir.join("cpu.stat"))?.unwrap_or_default();
    let mut cpu = v2::CPUStat::new();
    copy_keys!(raw => cpu; usage_usec, user_usec, system_usec, nr_periods, nr_throttled, throttled_usec,
        nr_bursts, burst_usec);
    cpu.psi = psi(&dir.join("cpu.pressure"))?;
    m.cpu = MessageField::some(cpu);

    let raw = flat_keyed(&dir.join("memory.stat"))?.unwrap_or_default();
    let mut mem = v2::MemoryStat::new();
    copy_keys!(raw => mem; anon, file, kernel_stack, slab, sock, shmem, file_mapped, file_dirty,
        file_writeback, anon_thp, inactive_anon, active_anon, inactive_file, active_file, unevictable,
        slab_reclaimable, slab_unreclaimable, pgfault, pgmajfault, workingset_refault, workingset_activate,
        workingset_nodereclaim, pgrefill, pgscan, pgsteal, pgactivate, pgdeactivate, pglazyfree, pglazyfreed,
        thp_fault_alloc, thp_collapse_alloc, workingset_refault_anon, workingset_refault_file,
        workingset_activate_anon, workingset_activate_file);
    mem.usage = one("memory.current")?;
    mem.usage_limit = one("memory.max")?;
    mem.max_usage = one("memory.peak")?;
    mem.swap_usage = one("memory.swap.current")?;
    mem.swap_limit = one("memory.swap.max")?;
    mem.swap_max_usage = one("memory.swap.peak")?;
    mem.psi = psi(&dir.join("memory.pressure"))?;
    m.memory = MessageField::some(mem);

    // Unlike the others, upstream leaves memory_events out when the file is missing or empty.
    if let Some(raw) = flat_keyed(&dir.join("memory.events"))?.filter(|r| !r.is_empty()) {
        let mut ev = v2::MemoryEvents::new();
        copy_keys!(raw => ev; low, high, max, oom, oom_kill, oom_group_kill);
        m.memory_events = MessageField::some(ev);
    }

    m.io = MessageField::some(v2::IOStat {
        usage: io_entries(&dir.join("io.stat"))?,
        psi: psi(&dir.join("io.pressure"))?,
        ..Default::default()
    });

    let entries = |name: &str| -> Result<Vec<v2::RdmaEntry>> {
        let v = rdma(&dir.join(name))?.unwrap_or_default();
        let entry = |(device, hca_handles, hca_objects)| v2::RdmaEntry {
            device,
            hca_handles,
            hca_objects,
            ..Default::default()
        };
        Ok(v.into_iter().map(entry).collect())
    };
    m.rdma = MessageField::some(v2::RdmaStat {
        current: entries("rdma.current")?,
        limit: entries("rdma.max")?,
        ..Default::default()
    });

    for size in hugetlb_sizes(dir, "current")? {
        let failcnt = flat_keyed(&dir.join(format!("hugetlb.{size}.events")))?;
        m.hugetlb.push(v2::HugeTlbStat {
            current: one(&format!("hugetlb.{size}.current"))?,
            max: one(&format!("hugetlb.{size}.max"))?,
            failcnt: failcnt.map_or(0, |raw| get(&raw, "max")),
            pagesize: size,
            ..Default::default()
        });
    }
    Ok(m)
}

/// Lines `8:0 rbytes=N wbytes=N rios=N wios=N dbytes=N dios=N ...`. Only the four counters the proto has
/// are read: other keys (io.latency's `depth=max`, io.cost's) are not all numbers.
fn io_entries(path: &Path) -> Result<Vec<v2::IOEntry>> {
    let mut out = Vec::new();
    for line in read(path)?.unwrap_or_default().lines() {
        let mut fields = line.split_whitespace();
        let Some(dev) = fields.next() else { continue };
        let num = |s: &str| s.parse::<u64>().map_err(|_| garbled(path, line));
        let (major, minor) = dev.split_once(':').ok_or_else(|| garbled(path, line))?;
        let mut e = v2::IOEntry {
            major: num(major)?,
            minor: num(minor)?,
            ..Default::default()
        };
        for kv in fields {
            let (field, v) = match kv.split_once('=') {
                Some(("rbytes", v)) => (&mut e.rbytes, v),
                Some(("wbytes", v)) => (&mut e.wbytes, v),
                Some(("rios", v)) => (&mut e.rios, v),
                Some(("wios", v)) => (&mut e.wios, v),
                _ => continue,
            };
            *field = num(v)?;
        }
        out.push(e);
    }
    Ok(out)
}

/// A `*.pressure` file: lines `some avg10=0.81 avg60=12.97 avg300=19.12 total=136218563` and `full ...`.
fn psi(path: &Path) -> Result<MessageField<v2::PSIStats>> {
    let Some(text) = read(path)? else {
        return Ok(MessageField::none());
    };
    let mut stats = v2::PSIStats::new();
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let slot = match fields.next() {
            Some("some") => &mut stats.some,
            Some("full") => &mut stats.full,
            _ => continue,
        };
        let mut d = v2::PSIData::new();
        for kv in fields {
            let (k, v) = kv.split_once('=').ok_or_else(|| garbled(path, line))?;
            let avg = |v: &str| v.parse::<f64>().map_err(|_| garbled(path, line));
            match k {
                "avg10" => d.avg10 = avg(v)?,
                "avg60" => d.avg60 = avg(v)?,
                "avg300" => d.avg300 = avg(v)?,
                "total" => d.total = v.parse().map_err(|_| garbled(path, line))?,
                _ => {}
            }
        }
        *slot = MessageField::some(d);
    }
    Ok(MessageField::some(stats))
}

// ---- shared by both ----

/// `rdma.current` / `rdma.max` lines `mlx5_0 hca_handle=3 hca_object=max` as (device, handles, objects);
/// "max" reads as u32::MAX (both versions, as upstream).
fn rdma(path: &Path) -> Result<Option<Vec<(String, u32, u32)>>> {
    let Some(text) = read(path)? else { return Ok(None) };
    let mut out = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [device, a, b] = fields[..] else { continue };
        let (mut handles, mut objects) = (0, 0);
        for kv in [a, b] {
            let Some((k, v)) = kv.split_once('=') else { continue };
            let v = if v == "max" {
                u32::MAX
            } else {
                v.parse().map_err(|_| garbled(path, line))?
            };
            match k {
                "hca_handle" => handles = v,
                "hca_object" => objects = v,
                _ => {}
            }
        }
        out.push((device.to_string(), handles, objects));
    }
    Ok(Some(out))
}

/// The huge page sizes `dir` has counters for, from its file names (`hugetlb.2MB.<suffix>`), sorted by
/// name. Upstream lists /sys/kernel/mm/hugepages instead and gets the same names; reading the directory
/// keeps this to the cgroup's own files.
fn hugetlb_sizes(dir: &Path, suffix: &str) -> Result<Vec<String>> {
    let list = match std::fs::read_dir(dir) {
        Ok(l) => l,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::Other(format!("listing {}: {e}", dir.display()))),
    };
    let mut sizes: Vec<String> = list
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            let size = name.strip_prefix("hugetlb.")?.strip_suffix(suffix)?.strip_suffix('.')?;
            // `hugetlb.2MB.rsvd.*` count reservations, which upstream does not report.
            (!size.contains('.')).then(|| size.to_string())
        })
        .collect();
    sizes.sort();
    Ok(sizes)
}

/// A cgroup file's text; None if it does not exist, or (pressure files with PSI disabled at boot) the
/// kernel does not support reading it.
fn read(path: &Path) -> Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == ErrorKind::NotFound || e.raw_os_error() == Some(libc::EOPNOTSUPP) => Ok(None),
        Err(e) => Err(Error::Other(format!("reading {}: {e}", path.display()))),
    }
}

fn garbled(path: &Path, what: &str) -> Error {
    Error::Other(format!("unexpected {what:?} in {}", path.display()))
}

/// A counter as upstream's parseUint reads it: negative values (which racy per-cpu sums put in some
/// kernels' memory.stat) count as 0.
fn parse_u64(s: &str) -> Option<u64> {
    s.parse().ok().or_else(|| {
        let digits = s.strip_prefix('-')?;
        (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())).then_some(0)
    })
}

/// A one-value file (`memory.current`); "max" (no limit) reads as `max`.
fn single(path: &Path, max: u64) -> Result<Option<u64>> {
    let Some(text) = read(path)? else { return Ok(None) };
    match text.trim() {
        "max" => Ok(Some(max)),
        t => parse_u64(t).map(Some).ok_or_else(|| garbled(path, t)),
    }
}

/// A file of `key value` lines (`memory.stat`, `cpu.stat`).
fn flat_keyed(path: &Path) -> Result<Option<HashMap<String, u64>>> {
    let Some(text) = read(path)? else { return Ok(None) };
    let mut out = HashMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let mut fields = line.split_whitespace();
        match (fields.next(), fields.next().and_then(parse_u64), fields.next()) {
            (Some(key), Some(value), None) => out.insert(key.to_string(), value),
            _ => return Err(garbled(path, line)),
        };
    }
    Ok(Some(out))
}

fn get(raw: &HashMap<String, u64>, key: &str) -> u64 {
    raw.get(key).copied().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use protobuf::Message;
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    fn fixture(rel: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("test-fixtures/cgroup")
            .join(rel)
    }

    fn v1_cgroup(dirs: &[(&str, &str)]) -> Cgroup {
        Cgroup::V1(
            dirs.iter()
                .map(|(c, d)| (c.to_string(), fixture(d)))
                .collect::<BTreeMap<_, _>>(),
        )
    }

    fn v1_fixture() -> v1::Metrics {
        let cg = v1_cgroup(&[
            ("cpu", "v1/cpu,cpuacct"),
            ("cpuacct", "v1/cpu,cpuacct"),
            ("memory", "v1/memory"),
            ("pids", "v1/pids"),
            ("blkio", "v1/blkio"),
            ("hugetlb", "v1/hugetlb"),
            ("rdma", "v1/rdma"),
        ]);
        v1_metrics(&cg, &fixture("v1/partitions")).unwrap()
    }

    #[test]
    fn v1_cpu_in_nanoseconds() {
        let m = v1_fixture();
        let usage = &m.cpu.usage;
        assert_eq!(usage.total, 12_345_678_901);
        assert_eq!(usage.per_cpu, [5_345_678_901, 7_000_000_000]);
        // cpuacct.stat: user 874, system 361 ticks of 10ms.
        assert_eq!(usage.user, 8_740_000_000);
        assert_eq!(usage.kernel, 3_610_000_000);
        let t = &m.cpu.throttling;
        assert_eq!(
            (t.periods, t.throttled_periods, t.throttled_time),
            (1200, 37, 4_815_162_342)
        );
    }

    #[test]
    fn v1_memory() {
        let m = v1_fixture();
        let s = &m.memory;
        assert_eq!(
            (s.cache, s.rss, s.rss_huge, s.mapped_file),
            (2_031_616, 1_863_680, 0, 12_288)
        );
        assert_eq!((s.dirty, s.writeback, s.unevictable), (24_576, 4096, 0));
        assert_eq!(
            (s.pg_pg_in, s.pg_pg_out, s.pg_fault, s.pg_maj_fault),
            (30_774, 29_823, 68_940, 9)
        );
        assert_eq!((s.inactive_anon, s.active_anon), (1_789_952, 12_288));
        assert_eq!((s.inactive_file, s.active_file), (1_028_096, 1_003_520));
        assert_eq!(
            (s.hierarchical_memory_limit, s.hierarchical_swap_limit),
            (536_870_912, 1_073_741_824)
        );
        assert_eq!(
            (s.total_cache, s.total_rss, s.total_rss_huge),
            (2_035_712, 1_867_776, 2_097_152)
        );
        assert_eq!(
            (s.total_mapped_file, s.total_dirty, s.total_writeback),
            (16_384, 28_672, 8192)
        );
        assert_eq!((s.total_pg_pg_in, s.total_pg_pg_out), (30_775, 29_824));
        assert_eq!((s.total_pg_fault, s.total_pg_maj_fault), (68_941, 10));
        assert_eq!((s.total_inactive_anon, s.total_active_anon), (1_794_048, 16_384));
        assert_eq!((s.total_inactive_file, s.total_active_file), (1_032_192, 1_007_616));
        assert_eq!(s.total_unevictable, 4096);
        let e = |e: &v1::MemoryEntry| (e.usage, e.limit, e.max, e.failcnt);
        assert_eq!(e(&s.usage), (5_099_520, 536_870_912, 6_762_496, 3));
        assert_eq!(e(&s.swap), (5_222_400, 1_073_741_824, 6_885_376, 0));
        assert_eq!(e(&s.kernel), (999_424, 9_223_372_036_854_771_712, 1_138_688, 0));
        assert_eq!(e(&s.kernel_tcp), (12_288, 9_223_372_036_854_771_712, 20_480, 0));
        let oom = &m.memory_oom_control;
        assert_eq!((oom.oom_kill_disable, oom.under_oom, oom.oom_kill), (0, 0, 2));
    }

    #[test]
    fn v1_pids_hugetlb_rdma() {
        let m = v1_fixture();
        // pids.max "max" reads as 0 in v1.
        assert_eq!((m.pids.current, m.pids.limit), (7, 0));
        let h: Vec<_> = m
            .hugetlb
            .iter()
            .map(|h| (h.pagesize.as_str(), h.usage, h.max, h.failcnt))
            .collect();
        assert_eq!(h, [("1GB", 0, 1_073_741_824, 0), ("2MB", 4_194_304, 8_388_608, 1)]);
        let r = |v: &[v1::RdmaEntry]| -> Vec<_> {
            v.iter()
                .map(|e| (e.device.clone(), e.hca_handles, e.hca_objects))
                .collect()
        };
        assert_eq!(r(&m.rdma.current), vec![("mlx5_0".to_string(), 3, 120)]);
        assert_eq!(r(&m.rdma.limit), vec![("mlx5_0".to_string(), u32::MAX, 1000)]);
        assert!(m.network.is_empty() && m.cgroup_stats.is_none());
    }

    fn blkio(v: &[v1::BlkIOEntry]) -> Vec<(String, u64, u64, String, u64)> {
        v.iter()
            .map(|e| (e.device.clone(), e.major, e.minor, e.op.clone(), e.value))
            .collect()
    }

    #[test]
    fn v1_blkio_throttle_fallback() {
        let b = v1_fixture().blkio.unwrap();
        let serviced = blkio(&b.io_serviced_recursive);
        assert_eq!(serviced.len(), 12, "{serviced:?}"); // the Total summary line is dropped
        assert_eq!(serviced[0], ("/dev/sda".into(), 8, 0, "Read".into(), 12));
        assert_eq!(serviced[11], ("/dev/vda".into(), 254, 0, "Total".into(), 2541));
        assert_eq!(
            blkio(&b.io_service_bytes_recursive)[1],
            ("/dev/vda".into(), 254, 0, "Write".into(), 4096)
        );
        assert!(b.sectors_recursive.is_empty() && b.io_queued_recursive.is_empty());
    }

    #[test]
    fn v1_blkio_cfq() {
        let cg = v1_cgroup(&[("blkio", "v1/blkio-cfq")]);
        let b = v1_metrics(&cg, &fixture("v1/partitions")).unwrap().blkio.unwrap();
        assert_eq!(
            blkio(&b.sectors_recursive),
            [("/dev/sda".into(), 8, 0, String::new(), 10736)]
        );
        assert_eq!(
            blkio(&b.io_time_recursive),
            [("/dev/sda".into(), 8, 0, String::new(), 1547)]
        );
        assert_eq!(
            blkio(&b.io_serviced_recursive)[4],
            ("/dev/sda".into(), 8, 0, "Total".into(), 362)
        );
        assert_eq!(b.io_service_bytes_recursive[0].value, 5_070_848);
        assert_eq!(b.io_merged_recursive[1].value, 4);
        assert_eq!(b.io_wait_time_recursive[0].value, 297_466_321);
        assert_eq!(b.io_service_time_recursive.len(), 5);
        assert_eq!(b.io_queued_recursive.len(), 5);
    }

    #[test]
    fn v1_missing_files_are_skipped() {
        // Controllers whose directories are gone, and one (pids) without its files.
        let cg = v1_cgroup(&[
            ("memory", "v1/nonexistent"),
            ("cpuacct", "v1/nonexistent"),
            ("pids", "v1/memory"),
        ]);
        let m = v1_metrics(&cg, &fixture("v1/nonexistent")).unwrap();
        let mut want = v1::Metrics::new();
        want.cpu = MessageField::some(v1::CPUStat {
            usage: MessageField::some(v1::CPUUsage::new()),
            throttling: MessageField::some(v1::Throttle::new()),
            ..Default::default()
        });
        assert_eq!(m, want);
    }

    #[test]
    fn v2_fixture() {
        let any = metrics(&Cgroup::V2(fixture("v2"))).unwrap();
        assert_eq!(any.type_url, "io.containerd.cgroups.v2.Metrics");
        let m = v2::Metrics::parse_from_bytes(&any.value).unwrap();
        assert_eq!((m.pids.current, m.pids.limit), (12, 4096));

        let c = &m.cpu;
        assert_eq!(
            (c.usage_usec, c.user_usec, c.system_usec),
            (991_741_682, 736_670_897, 255_070_785)
        );
        assert_eq!((c.nr_periods, c.nr_throttled, c.throttled_usec), (420, 12, 345_678));
        assert_eq!((c.nr_bursts, c.burst_usec), (1, 2500));
        assert_eq!(
            (c.psi.some.avg10, c.psi.some.avg60, c.psi.some.avg300),
            (0.81, 12.97, 19.12)
        );
        assert_eq!((c.psi.some.total, c.psi.full.total), (136_218_563, 0));

        let s = &m.memory;
        assert_eq!(
            (s.anon, s.file, s.kernel_stack, s.slab, s.sock, s.shmem),
            (1_863_680, 2_031_616, 65_536, 925_184, 4096, 8192)
        );
        assert_eq!(
            (s.file_mapped, s.file_dirty, s.file_writeback, s.anon_thp),
            (12_288, 24_576, 4096, 2_097_152)
        );
        assert_eq!(
            (s.inactive_anon, s.active_anon, s.inactive_file, s.active_file),
            (1_789_952, 12_288, 1_028_096, 1_003_520)
        );
        assert_eq!(
            (s.unevictable, s.slab_reclaimable, s.slab_unreclaimable),
            (0, 421_376, 503_808)
        );
        assert_eq!(
            (s.pgfault, s.pgmajfault, s.pgrefill, s.pgscan, s.pgsteal),
            (68_940, 9, 33, 120, 98)
        );
        assert_eq!(
            (s.pgactivate, s.pgdeactivate, s.pglazyfree, s.pglazyfreed),
            (410, 17, 5, 4)
        );
        assert_eq!(
            (s.thp_fault_alloc, s.thp_collapse_alloc, s.workingset_nodereclaim),
            (1, 0, 3)
        );
        // Linux 5.9+ reports only the split workingset counters.
        assert_eq!((s.workingset_refault, s.workingset_activate), (0, 0));
        assert_eq!((s.workingset_refault_anon, s.workingset_refault_file), (1, 45));
        assert_eq!((s.workingset_activate_anon, s.workingset_activate_file), (2, 7));
        // memory.max "max" is u64::MAX in v2; memory.swap.peak is missing (kernels before 6.5).
        assert_eq!((s.usage, s.usage_limit, s.max_usage), (5_099_520, u64::MAX, 6_762_496));
        assert_eq!(
            (s.swap_usage, s.swap_limit, s.swap_max_usage),
            (122_880, 1_073_741_824, 0)
        );
        assert_eq!((s.psi.full.avg60, s.psi.full.total), (0.05, 20_111));

        let ev = &m.memory_events;
        assert_eq!(
            (ev.low, ev.high, ev.max, ev.oom, ev.oom_kill, ev.oom_group_kill),
            (0, 0, 14, 2, 1, 0)
        );

        let io: Vec<_> =
            m.io.usage
                .iter()
                .map(|e| (e.major, e.minor, e.rbytes, e.wbytes, e.rios, e.wios))
                .collect();
        assert_eq!(
            io,
            [(254, 0, 11_571_200, 4096, 357, 1), (8, 0, 5_070_848, 425_984, 310, 52)]
        );
        assert_eq!((m.io.psi.some.avg300, m.io.psi.full.total), (1.90, 12_352_767));

        let h: Vec<_> = m
            .hugetlb
            .iter()
            .map(|h| (h.pagesize.as_str(), h.current, h.max, h.failcnt))
            .collect();
        assert_eq!(h, [("1GB", 0, 0, 0), ("2MB", 2_097_152, u64::MAX, 3)]);
        let r = &m.rdma;
        assert_eq!(
            (
                r.current[0].device.as_str(),
                r.current[0].hca_handles,
                r.current[0].hca_objects
            ),
            ("mlx5_0", 3, 120)
        );
        assert_eq!((r.limit[0].hca_handles, r.limit[0].hca_objects), (u32::MAX, 1000));
    }

    #[test]
    fn v2_missing_files_are_skipped() {
        let m = v2_metrics(&fixture("v2/nonexistent")).unwrap();
        assert_eq!(m.pids.current, 0);
        assert_eq!(m.cpu.usage_usec, 0);
        assert!(m.cpu.psi.is_none() && m.memory.psi.is_none() && m.io.usage.is_empty());
        assert!(m.memory_events.is_none() && m.hugetlb.is_empty());
    }

    #[test]
    fn garbled_files_are_errors_naming_them() {
        let err = |r: Result<()>| r.unwrap_err().to_string();
        let cg = v1_cgroup(&[("cpuacct", "garbled/v1-cpuacct")]);
        let e = err(v1_metrics(&cg, &fixture("v1/partitions")).map(drop));
        assert!(
            e.contains("garbled/v1-cpuacct/cpuacct.stat") && e.contains("system"),
            "{e}"
        );
        let cg = v1_cgroup(&[("blkio", "garbled/v1-blkio")]);
        let e = err(v1_metrics(&cg, &fixture("v1/partitions")).map(drop));
        assert!(
            e.contains("blkio.throttle.io_serviced") && e.contains("Write many"),
            "{e}"
        );
        let e = err(v2_metrics(&fixture("garbled/v2-io")).map(drop));
        assert!(e.contains("garbled/v2-io/io.stat") && e.contains("wbytes=4k"), "{e}");
        let e = err(v2_metrics(&fixture("garbled/v2-memory")).map(drop));
        assert!(
            e.contains("garbled/v2-memory/memory.stat") && e.contains("2031616 kB"),
            "{e}"
        );
    }

    #[test]
    fn counters_parse_as_upstream() {
        assert_eq!(parse_u64("18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_u64("-4096"), Some(0));
        assert_eq!(parse_u64("-99999999999999999999"), Some(0));
        assert_eq!((parse_u64("-"), parse_u64("4k"), parse_u64("")), (None, None, None));
    }

    #[test]
    fn this_host() {
        let cg = Cgroup::of_pid(std::process::id()).unwrap();
        let any = metrics(&cg).unwrap();
        match cg {
            Cgroup::V1(_) => {
                assert_eq!(any.type_url, "io.containerd.cgroups.v1.Metrics");
                let m = v1::Metrics::parse_from_bytes(&any.value).unwrap();
                assert!(m.cpu.usage.total > 0, "{m:?}");
                assert!(!m.cpu.usage.per_cpu.is_empty(), "{m:?}");
            }
            Cgroup::V2(_) => {
                assert_eq!(any.type_url, "io.containerd.cgroups.v2.Metrics");
                let m = v2::Metrics::parse_from_bytes(&any.value).unwrap();
                assert!(m.cpu.usage_usec > 0, "{m:?}");
            }
        }
    }
}
