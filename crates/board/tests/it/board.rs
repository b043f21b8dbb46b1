//! Board detection and health on sample sysfs trees (as found on the boards), and GPIO rules
//! with a stand-in pin backend.

use std::collections::HashMap;
use std::path::Path;

use dinoedge_board::gpio::{Measures, Output};
use dinoedge_board::{Board, BoardError, Pins, RuleSet, Throttling, detect_at, read_health};

fn write(root: &Path, rel: &str, content: &[u8]) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, content).unwrap();
}

#[test]
fn boards_are_told_apart_from_their_files() {
    // (files of the sample tree, CPU architecture, profile, description)
    type Case<'a> = (&'a [(&'a str, &'a [u8])], &'a str, Option<&'a str>, &'a str);
    let cases: [Case; 6] = [
        (&[("proc/device-tree/model", b"Raspberry Pi 5 Model B Rev 1.0\0")], "aarch64", Some("rpi5"), "Raspberry Pi 5 Model B Rev 1.0"),
        (&[("proc/device-tree/model", b"Raspberry Pi 4 Model B Rev 1.5\0")], "aarch64", Some("rpi4"), "Raspberry Pi 4 Model B Rev 1.5"),
        (&[("proc/device-tree/model", b"Raspberry Pi Compute Module 4 Rev 1.1\0")], "aarch64", Some("rpi4"), "Raspberry Pi Compute Module 4 Rev 1.1"),
        (&[("proc/device-tree/model", b"Raspberry Pi 3 Model B Plus Rev 1.3\0")], "aarch64", None, "Raspberry Pi 3 Model B Plus Rev 1.3"),
        (
            &[
                ("proc/device-tree/model", b"NVIDIA Jetson Orin Nano Engineering Reference Developer Kit Super\0"),
                ("etc/nv_tegra_release", b"# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, DATE: Wed Jan  8 01:49:37 UTC 2025\n"),
            ],
            "aarch64",
            Some("jetson-orin-nano"),
            "NVIDIA Jetson Orin Nano Engineering Reference Developer Kit Super (L4T R36 (release), REVISION: 4.3)",
        ),
        (&[("sys/devices/virtual/dmi/id/product_name", b"NUC13ANHi5\n")], "x86_64", Some("x86"), "x86-64 (NUC13ANHi5)"),
    ];
    for (files, arch, profile, describe) in cases {
        let dir = tempfile::tempdir().unwrap();
        for (rel, content) in files {
            write(dir.path(), rel, content);
        }
        let b = detect_at(dir.path(), arch);
        assert_eq!(b.profile(), profile, "{b:?}");
        assert_eq!(b.describe(), describe);
        assert_eq!(b.is_raspberry_pi(), describe.starts_with("Raspberry"));
    }
    let empty = tempfile::tempdir().unwrap();
    assert_eq!(
        detect_at(empty.path(), "riscv64"),
        Board::Other {
            description: "riscv64 machine".into()
        }
    );
}

#[test]
fn temperature_and_throttling_from_sysfs() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    // a Pi 5: one SoC zone; the firmware's flags say under-voltage and throttling, now and since boot
    write(
        root,
        "sys/class/thermal/thermal_zone0/type",
        b"cpu-thermal\n",
    );
    write(root, "sys/class/thermal/thermal_zone0/temp", b"81234\n");
    write(root, "sys/class/thermal/cooling_device0/type", b"pwm-fan\n");
    write(
        root,
        "sys/devices/platform/soc/soc:firmware/get_throttled",
        b"50005\n",
    );
    let h = read_health(root);
    assert_eq!(h.temperature_c, Some(81.234));
    assert_eq!(h.zone.as_deref(), Some("cpu-thermal"));
    let t = h.throttling.unwrap();
    assert!(t.under_voltage_now() && t.throttled_now() && !t.soft_temp_limit_now());
    assert!(t.under_voltage_occurred() && t.throttled_occurred());
    let w = h.warnings(80.0);
    assert_eq!(w.len(), 3, "{w:?}");
    assert!(
        w[0].contains("under-voltage") && w[1].contains("throttled") && w[2].contains("81.2 °C")
    );
    assert!(h.warnings(85.0).iter().all(|w| !w.contains("°C")));

    // a Jetson: several zones, the CPU one is chosen; no Pi firmware flags
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    for (i, (kind, milli)) in [
        ("GPU-therm", "48500"),
        ("CPU-therm", "52250"),
        ("tj-thermal", "53000"),
    ]
    .iter()
    .enumerate()
    {
        write(
            root,
            &format!("sys/class/thermal/thermal_zone{i}/type"),
            kind.as_bytes(),
        );
        write(
            root,
            &format!("sys/class/thermal/thermal_zone{i}/temp"),
            milli.as_bytes(),
        );
    }
    let h = read_health(root);
    assert_eq!(
        (h.zone.as_deref(), h.temperature_c),
        (Some("CPU-therm"), Some(52.25))
    );
    assert_eq!(h.throttling, None);
    assert!(h.warnings(80.0).is_empty());

    // nothing readable: nothing claimed
    let h = read_health(tempfile::tempdir().unwrap().path());
    assert_eq!((h.temperature_c, h.throttling), (None, None));
}

#[test]
fn throttling_flags_parse_like_vcgencmd_prints_them() {
    assert_eq!(Throttling::parse("throttled=0x0"), Some(Throttling(0)));
    assert_eq!(
        Throttling::parse("throttled=0x50000\n"),
        Some(Throttling(0x50000))
    );
    assert_eq!(Throttling::parse("0x8"), Some(Throttling(8)));
    assert_eq!(Throttling::parse("nonsense"), None);
    assert!(Throttling(0).warnings().is_empty());
    let past = Throttling(0x50000).warnings();
    assert_eq!(past.len(), 1);
    assert!(past[0].contains("since boot"), "{past:?}");
    assert!(Throttling(0x8).warnings()[0].contains("soft temperature"));
}

/// A result's measures, by hand.
#[derive(Default)]
struct Seen {
    nearest: HashMap<String, f32>,
    coverage: HashMap<(String, String), f32>,
}

impl Measures for Seen {
    fn nearest_m(&self, region: &str) -> Option<f32> {
        self.nearest.get(region).copied()
    }
    fn coverage(&self, class: &str, region: &str) -> Option<f32> {
        self.coverage.get(&(class.into(), region.into())).copied()
    }
}

/// A stand-in backend: records what is driven, plays back input levels.
#[derive(Default)]
struct Recorder {
    levels: HashMap<u8, bool>,
    duties: HashMap<u8, f32>,
    inputs: HashMap<u8, Vec<bool>>,
}

impl Pins for Recorder {
    fn set(&mut self, pin: u8, high: bool) -> dinoedge_board::Result<()> {
        self.levels.insert(pin, high);
        Ok(())
    }
    fn pwm(&mut self, pin: u8, duty: f32) -> dinoedge_board::Result<()> {
        self.duties.insert(pin, duty);
        Ok(())
    }
    fn read(&mut self, pin: u8) -> dinoedge_board::Result<bool> {
        let q = self
            .inputs
            .get_mut(&pin)
            .ok_or_else(|| BoardError::Gpio(format!("pin {pin} not set up")))?;
        Ok(if q.len() > 1 { q.remove(0) } else { q[0] })
    }
}

#[test]
fn rules_drive_pins_from_results() {
    let rules = RuleSet::parse(&[
        "17=high:nearest(ahead)<0.8",
        "18=pwm:proximity(ahead,0.3,2)",
        "22=high:class(person)>0.05",
        "23=high:class(person@ahead)>0.2",
        "24=high:nearest(frame)>5",
        "27=snapshot",
    ])
    .unwrap();
    let mut pins = Recorder::default();
    // no result yet: everything low
    rules.apply(None, &mut pins).unwrap();
    assert!(pins.levels.values().all(|h| !h));
    assert_eq!(pins.duties[&18], 0.0);

    let mut seen = Seen::default();
    seen.nearest.insert("ahead".into(), 0.5);
    seen.nearest.insert("frame".into(), 0.5);
    seen.coverage
        .insert(("person".into(), "frame".into()), 0.10);
    seen.coverage
        .insert(("person".into(), "ahead".into()), 0.15);
    rules.apply(Some(&seen), &mut pins).unwrap();
    assert!(pins.levels[&17]);
    assert!((pins.duties[&18] - (2.0 - 0.5) / 1.7).abs() < 1e-6);
    assert_eq!(
        (pins.levels[&22], pins.levels[&23], pins.levels[&24]),
        (true, false, false)
    );

    // further away: off; proximity at the ends clamps
    seen.nearest.insert("ahead".into(), 3.0);
    rules.apply(Some(&seen), &mut pins).unwrap();
    assert!(!pins.levels[&17]);
    assert_eq!(pins.duties[&18], 0.0);
    seen.nearest.insert("ahead".into(), 0.1);
    assert!(
        rules
            .evaluate(Some(&seen))
            .contains(&(18, Output::Duty(1.0)))
    );
    // a region the result lacks counts as "not seen": low
    let other = RuleSet::parse(&["5=high:nearest(left)<9"]).unwrap();
    assert_eq!(other.evaluate(Some(&seen)), vec![(5, Output::Level(false))]);
}

#[test]
fn the_rules_in_metres_are_named() {
    let rules = RuleSet::parse(&[
        "17=high:nearest(ahead)<0.8",
        "18=pwm:proximity(ahead,0.3,2)",
        "22=high:class(person)>0.05",
        "27=snapshot",
    ])
    .unwrap();
    assert_eq!(
        rules.depth_rules(),
        vec![
            "17=high:nearest(ahead)<0.8",
            "18=pwm:proximity(ahead,0.3,2)"
        ]
    );
    let classes = RuleSet::parse(&["22=high:class(person)>0.05"]).unwrap();
    assert!(classes.depth_rules().is_empty());
}

#[test]
fn a_snapshot_fires_on_the_rising_edge_only() {
    let mut rules = RuleSet::parse(&["27=snapshot"]).unwrap();
    let mut pins = Recorder::default();
    pins.inputs.insert(27, vec![false, true, true, false, true]);
    let fired: Vec<bool> = (0..5)
        .map(|_| rules.snapshot_requested(&mut pins).unwrap())
        .collect();
    assert_eq!(fired, [false, true, false, false, true]);
    // a button held at start is not a press
    let mut rules = RuleSet::parse(&["27=snapshot"]).unwrap();
    pins.inputs.insert(27, vec![true]);
    assert!(!rules.snapshot_requested(&mut pins).unwrap());
}

#[test]
fn bad_rules_say_what_is_wrong() {
    let cases = [
        ("17", "no '='"),
        ("40=snapshot", "BCM GPIO number 0-27"),
        ("x=snapshot", "BCM GPIO number"),
        ("17=high:nearest(ahead)", "expected <VALUE or >VALUE"),
        ("17=high:nearest(ahead)<near", "is not a number"),
        ("17=high:nearest(ahead)<0", "above 0 m"),
        ("17=high:nearest(a b)<1", "region"),
        ("17=high:class(person)>5", "fraction 0-1"),
        ("17=high:class()>0.1", "class name"),
        ("17=high:speed(ahead)<3", "unknown measure"),
        ("17=pwm:proximity(ahead,2,1)", "below FAR"),
        ("17=pwm:proximity(ahead,1)", "three arguments"),
        ("17=pwm:nearest(ahead)<1", "proximity(REGION,NEAR,FAR)"),
        ("17=blink", "unknown action"),
    ];
    for (rule, want) in cases {
        let e = rule
            .parse::<dinoedge_board::Rule>()
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(want) && e.contains(rule) && e.contains("forms:"),
            "{rule}: {e}"
        );
    }
    let e = RuleSet::parse(&["17=snapshot", "17=high:nearest(a)<1"]).unwrap_err();
    assert!(matches!(e, BoardError::PinTwice { pin: 17, .. }), "{e}");
}

#[test]
fn gpio_off_a_pi_is_a_clear_error() {
    let rules = RuleSet::parse(&["17=high:nearest(ahead)<0.8"]).unwrap();
    // here (CI, a laptop) there is no Pi GPIO: with or without the `rpi` feature, a message
    let Err(e) = dinoedge_board::open_pins(&rules) else {
        eprintln!("a GPIO opened: this is a Raspberry Pi, nothing to check");
        return;
    };
    let msg = e.to_string();
    assert!(msg.contains("Raspberry Pi"), "{msg}");
}
