//! The Helm chart, without a cluster: `helm lint --strict` with the default and example values,
//! `helm template` in both modes validated against the Kubernetes 1.29 schemas (kubernetes-validate),
//! the native-sidecar switch by Kubernetes version, the rendered proxy.toml accepted by
//! `voxguard check`, and the values schema refusing a wrong type. `.ci/test` installs helm and
//! kubernetes-validate.

use std::process::Command;

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/voxguard");

fn run(cmd: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd} is needed (.ci/test installs it): {e}"));
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn example(name: &str) -> String {
    format!("{CHART}/examples/{name}.yaml")
}

fn template(values: &str, kube: &str, extra: &[&str]) -> String {
    let mut args = vec!["template", "t", CHART, "-f", values, "--kube-version", kube];
    args.extend(extra);
    let (ok, out) = run("helm", &args);
    assert!(ok, "{out}");
    out
}

#[test]
fn the_chart_lints_strictly_with_every_values_file() {
    for values in [None, Some(example("sidecar")), Some(example("edge"))] {
        let mut args = vec!["lint", "--strict", CHART];
        if let Some(v) = &values {
            args.extend(["-f", v.as_str()]);
        }
        let (ok, out) = run("helm", &args);
        assert!(ok, "{values:?}: {out}");
    }
    let (ok, out) = run(
        "helm",
        &["lint", "--strict", CHART, "--set", "replicaCount=abc"],
    );
    assert!(!ok, "the values schema refuses a wrong type: {out}");
    assert!(out.contains("replicaCount"), "{out}");
}

#[test]
fn rendered_manifests_validate_against_the_kubernetes_schemas() {
    let dir = tempfile::tempdir().unwrap();
    for mode in ["sidecar", "edge"] {
        let rendered = template(&example(mode), "1.29.0", &[]);
        let path = dir.path().join(format!("{mode}.yaml"));
        std::fs::write(&path, &rendered).unwrap();
        let (ok, out) = run(
            "kubernetes-validate",
            &["-k", "1.29.0", "--strict", path.to_str().unwrap()],
        );
        assert!(ok, "{mode}: {out}");
        for must in [
            "readOnlyRootFilesystem: true",
            "runAsNonRoot: true",
            "RuntimeDefault",
            "- ALL",
            "path: /readyz",
            "checksum/config",
        ] {
            assert!(rendered.contains(must), "{mode}: {must} missing");
        }
        assert!(
            !rendered.contains("preStop"),
            "no preStop hook that makes voxguard leave first"
        );
        assert!(
            rendered.contains("terminationGracePeriodSeconds: 45"),
            "grace outlasts the 30 s drain"
        );
    }
    let edge = template(&example("edge"), "1.29.0", &[]);
    for kind in [
        "kind: Deployment",
        "kind: Service",
        "kind: HorizontalPodAutoscaler",
        "kind: PersistentVolumeClaim",
        "kind: NetworkPolicy",
        "\"helm.sh/hook\": test",
    ] {
        assert!(edge.contains(kind), "edge: {kind}");
    }
}

#[test]
fn the_sidecar_is_native_from_kubernetes_1_29_and_a_container_before() {
    let new = template(
        &example("sidecar"),
        "1.29.0",
        &["--show-only", "templates/example-workload.yaml"],
    );
    assert!(
        new.contains("initContainers:") && new.contains("restartPolicy: Always"),
        "{new}"
    );
    let old = template(
        &example("sidecar"),
        "1.28.0",
        &["--show-only", "templates/example-workload.yaml"],
    );
    assert!(
        !old.contains("initContainers:") && !old.contains("restartPolicy: Always"),
        "{old}"
    );
    assert!(
        old.matches("- name:").count() >= 2 || old.contains("name: app"),
        "{old}"
    );
}

#[test]
fn the_rendered_proxy_toml_passes_voxguard_check() {
    let dir = tempfile::tempdir().unwrap();
    for mode in ["sidecar", "edge"] {
        let cm = template(
            &example(mode),
            "1.29.0",
            &["--show-only", "templates/configmap.yaml"],
        );
        let body = cm.split_once("proxy.toml: |\n").expect("the config key").1;
        let toml: String = body
            .lines()
            .map(|l| l.strip_prefix("    ").unwrap_or(l))
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(
            !toml.contains("secret-value") && toml.contains("[[upstream]]"),
            "{toml}"
        );
        let path = dir.path().join(format!("{mode}.toml"));
        std::fs::write(&path, &toml).unwrap();
        let out = Command::new(crate::support::bin())
            .args(["check", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{mode}: {}\n{toml}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn the_plain_manifests_are_the_charts_output_and_validate() {
    for mode in ["sidecar", "edge"] {
        let committed = std::fs::read_to_string(format!(
            "{}/deploy/kubernetes/{mode}.yaml",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap();
        let (ok, rendered) = run(
            "helm",
            &[
                "template",
                "voxguard",
                CHART,
                "-f",
                &example(mode),
                "--kube-version",
                "1.29.0",
            ],
        );
        assert!(ok, "{rendered}");
        let body: String = committed
            .lines()
            .skip(2)
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(
            body, rendered,
            "deploy/kubernetes/{mode}.yaml is stale: regenerate it with the command in its header"
        );
        let (ok, out) = run(
            "kubernetes-validate",
            &[
                "-k",
                "1.29.0",
                "--strict",
                &format!(
                    "{}/deploy/kubernetes/{mode}.yaml",
                    env!("CARGO_MANIFEST_DIR")
                ),
            ],
        );
        assert!(ok, "{mode}: {out}");
    }
}

#[test]
fn monitoring_templates_use_exported_metrics_and_the_dashboard() {
    let rendered = template(
        &example("edge"),
        "1.29.0",
        &[
            "--set",
            "monitoring.serviceMonitor.enabled=true,monitoring.prometheusRule.enabled=true,monitoring.grafanaDashboard.enabled=true",
        ],
    );
    for kind in [
        "kind: ServiceMonitor",
        "kind: PrometheusRule",
        "grafana_dashboard: \"1\"",
    ] {
        assert!(rendered.contains(kind), "{kind}");
    }
    let declared =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/metrics.rs")).unwrap();
    let mut names = 0;
    for name in crate::support::metric_names(&rendered) {
        if name.starts_with("voxguard_dashboard") {
            continue;
        }
        assert!(
            declared.contains(&format!("\"{name}\"")),
            "{name} is not a metric voxguard exports"
        );
        names += 1;
    }
    assert!(names >= 8, "{names}");
    let chart_copy = std::fs::read_to_string(format!("{CHART}/dashboards/voxguard.json")).unwrap();
    let deploy_copy = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/grafana/voxguard-dashboard.json"
    ))
    .unwrap();
    assert_eq!(
        chart_copy, deploy_copy,
        "the chart's dashboard is deploy/grafana's"
    );
}
