//! The backends against directories laid out like cgroupfs: detection on
//! each kind of host, and the v2 backend's writes and kill reasons (no real
//! v2 hierarchy with controllers exists on the development hosts).

use std::fs;
use std::path::Path;

use super::*;

/// A tree of files: `(path, content)`.
fn lay_out(root: &Path, files: &[(&str, &str)]) {
    for (path, content) in files {
        let p = root.join(path);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, content).unwrap();
    }
}

/// In a temp dir, a "cgroup2 mount" is a directory with `cgroup.controllers`.
fn fake_cgroup2(p: &Path) -> bool {
    p.join("cgroup.controllers").exists()
}

const V1_HIERARCHIES: [(&str, &str); 4] = [
    ("memory/cgroup.procs", ""),
    ("cpu/cgroup.procs", ""),
    ("cpuacct/cgroup.procs", ""),
    ("pids/cgroup.procs", ""),
];

#[test]
fn detection_prefers_v2_with_its_controllers_then_v1_then_nothing() {
    // Pure v2 with the three controllers.
    let v2 = tempfile::tempdir().unwrap();
    lay_out(
        v2.path(),
        &[(
            "cgroup.controllers",
            "cpuset cpu io memory hugetlb pids rdma",
        )],
    );
    assert_eq!(
        detect(v2.path(), &fake_cgroup2),
        Some(Detected::V2(v2.path().to_owned()))
    );

    // This host: a v1 hybrid whose unified mount has only hugetlb.
    let hybrid = tempfile::tempdir().unwrap();
    lay_out(hybrid.path(), &V1_HIERARCHIES);
    lay_out(hybrid.path(), &[("unified/cgroup.controllers", "hugetlb")]);
    assert_eq!(
        detect(hybrid.path(), &fake_cgroup2),
        Some(Detected::V1(hybrid.path().to_owned()))
    );

    // A hybrid whose unified mount does have them: v2 there.
    fs::write(
        hybrid.path().join("unified/cgroup.controllers"),
        "cpu memory pids",
    )
    .unwrap();
    assert_eq!(
        detect(hybrid.path(), &fake_cgroup2),
        Some(Detected::V2(hybrid.path().join("unified")))
    );

    // v2 lacking pids and no v1: unusable, so creation refuses.
    let bare = tempfile::tempdir().unwrap();
    lay_out(bare.path(), &[("cgroup.controllers", "cpu memory")]);
    assert_eq!(detect(bare.path(), &fake_cgroup2), None);
    // v1 with a controller missing: unusable too.
    let partial = tempfile::tempdir().unwrap();
    lay_out(partial.path(), &V1_HIERARCHIES[..3]);
    assert_eq!(detect(partial.path(), &fake_cgroup2), None);
}

#[test]
fn this_hosts_own_group_is_read_per_hierarchy() {
    let text = "12:pids:/user.slice\n4:cpu,cpuacct:/agents\n0::/system.slice/agentd.service\n";
    assert_eq!(own_path_in(text, "cpuacct"), "/agents");
    assert_eq!(own_path_in(text, "pids"), "/user.slice");
    assert_eq!(own_path_in(text, ""), "/system.slice/agentd.service");
    assert_eq!(own_path_in("", "memory"), "/");
}

#[test]
fn v2_parent_moves_the_daemon_out_and_weighs_sandboxes_below_it() {
    let mount = tempfile::tempdir().unwrap();
    let m = mount.path();
    lay_out(
        m,
        &[
            ("cgroup.controllers", "cpu memory pids"),
            ("cgroup.subtree_control", ""),
            // A delegated slice already passing everything down.
            ("svc.slice/cgroup.subtree_control", "cpu memory pids"),
            ("svc.slice/agentd/cgroup.procs", "4242\n"),
        ],
    );
    let parent = V2Parent::open(m, "/svc.slice/agentd", 4242).unwrap();
    let read = |p: &str| fs::read_to_string(m.join(p)).unwrap();
    // The root did not pass the controllers down: enabled there; the
    // delegated slice already did: left alone.
    assert_eq!(read("cgroup.subtree_control"), "+cpu +memory +pids");
    assert_eq!(read("svc.slice/cgroup.subtree_control"), "cpu memory pids");
    assert_eq!(read("svc.slice/agentd/agentd-daemon/cgroup.procs"), "4242");
    assert_eq!(
        read("svc.slice/agentd/cgroup.subtree_control"),
        "+cpu +memory +pids"
    );
    assert_eq!(read("svc.slice/agentd/agentd-daemon/cpu.weight"), "100");
    assert_eq!(read("svc.slice/agentd/agentd-sandboxes/cpu.weight"), "50");
    assert_eq!(
        read("svc.slice/agentd/agentd-sandboxes/cgroup.subtree_control"),
        "+cpu +memory +pids"
    );

    let group = parent
        .create(
            "sbx_1",
            &CgroupLimits {
                memory_bytes: 64 << 20,
                pids: 32,
            },
        )
        .unwrap();
    let g = "svc.slice/agentd/agentd-sandboxes/sbx_1";
    assert_eq!(read(&format!("{g}/memory.max")), (64u64 << 20).to_string());
    assert_eq!(read(&format!("{g}/memory.swap.max")), "0");
    assert_eq!(read(&format!("{g}/cpu.max")), "100000 100000");
    assert_eq!(read(&format!("{g}/pids.max")), "32");
    group.add(777).unwrap();
    assert_eq!(read(&format!("{g}/cgroup.procs")), "777");

    // Nothing happened yet: no kill reason.
    lay_out(
        m,
        &[
            (
                &format!("{g}/cpu.stat"),
                "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n",
            ),
            (&format!("{g}/memory.peak"), "1048576\n"),
            (
                &format!("{g}/memory.events"),
                "low 0\nhigh 0\nmax 3\noom 1\noom_kill 0\n",
            ),
            (&format!("{g}/pids.events"), "max 0\n"),
        ],
    );
    let u = group.usage();
    assert_eq!(
        u,
        Usage {
            cpu_nanos: 1_500_000,
            memory_peak_bytes: 1 << 20,
            oom_killed: false,
            pids_hit: false,
        }
    );
    // The OOM killer fired and a fork was refused.
    lay_out(
        m,
        &[
            (
                &format!("{g}/memory.events"),
                "low 0\nhigh 0\nmax 9\noom 2\noom_kill 1\noom_group_kill 0\n",
            ),
            (&format!("{g}/pids.events"), "max 4\n"),
        ],
    );
    let u = group.usage();
    assert!(u.oom_killed && u.pids_hit, "{u:?}");

    // Killed whole through cgroup.kill, not by signalling listed pids
    // (777 is not ours).
    lay_out(m, &[(&format!("{g}/cgroup.kill"), "")]);
    assert_eq!(group.kill_pass(), 1);
    assert_eq!(read(&format!("{g}/cgroup.kill")), "1");
    fs::write(m.join(format!("{g}/cgroup.procs")), "").unwrap();
    assert_eq!(group.kill_pass(), 0);
}

#[test]
fn v2_refuses_when_its_base_cannot_hand_controllers_down() {
    // The base's subtree_control cannot be written (here: a directory in
    // its place; on a host, EBUSY from other processes in the group).
    let mount = tempfile::tempdir().unwrap();
    let m = mount.path();
    lay_out(
        m,
        &[
            ("cgroup.controllers", "cpu memory pids"),
            ("cgroup.subtree_control", "cpu memory pids"),
        ],
    );
    fs::create_dir_all(m.join("busy/cgroup.subtree_control")).unwrap();
    let err = V2Parent::open(m, "/busy", 1).unwrap_err();
    assert!(err.to_string().contains("cgroup.subtree_control"), "{err}");
}

#[test]
fn only_groups_of_gone_daemons_are_swept() {
    // A pid that certainly existed and is gone: a child we reaped.
    let mut gone = std::process::Command::new("/bin/true").spawn().unwrap();
    let dead = gone.id();
    gone.wait().unwrap();
    let parent = tempfile::tempdir().unwrap();
    let p = parent.path();
    let names = [
        owned_name(&spare_name(7)), // ours
        owned_name("sbx_01own"),
        format!("{dead}-spare-0"),
        format!("{dead}-sbx_01abc"),
        "1-spare-0".to_owned(), // pid 1 is alive
        "1-sbx_01live".to_owned(),
        "sbx_01old".to_owned(), // no pid prefix: never touched
        "notapid-x".to_owned(),
    ];
    for n in &names {
        fs::create_dir(p.join(n)).unwrap();
    }
    sweep_stale_groups(p);
    let mut left: Vec<String> = fs::read_dir(p)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    let mut want = vec![
        owned_name(&spare_name(7)),
        owned_name("sbx_01own"),
        "1-sbx_01live".to_owned(),
        "1-spare-0".to_owned(),
        "notapid-x".to_owned(),
        "sbx_01old".to_owned(),
    ];
    want.sort();
    assert_eq!(left, want);
}
