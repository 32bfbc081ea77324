//! The systemd units in `deploy/systemd/` are valid for the systemd here
//! (`systemd-analyze verify`: no unknown keys or bad values, the command
//! exists) and start the binaries with `serve --config`.

use std::process::Command;

use anyhow::{Result, ensure};
use meridian_tests::process::{workspace_binary, workspace_root};

#[test]
fn the_systemd_units_verify_and_run_serve_with_a_config_file() -> Result<()> {
    for role in ["edge", "hub"] {
        let name = format!("meridian-{role}.service");
        let unit = std::fs::read_to_string(workspace_root().join("deploy/systemd").join(&name))?;
        let exec = format!("ExecStart=/usr/local/bin/meridian-{role} serve --config /etc/meridian/{role}.toml");
        ensure!(unit.contains(&exec), "{name} lacks `{exec}`");
        for hardening in ["NoNewPrivileges=yes", "ProtectSystem=strict", "DynamicUser=yes", "CapabilityBoundingSet="] {
            ensure!(unit.contains(hardening), "{name} lacks {hardening}");
        }
        if Command::new("systemd-analyze").arg("--version").output().is_err() {
            eprintln!("systemd-analyze not found: {name} checked for its settings only");
            continue;
        }
        // The same unit, with the binary of this build where it would be installed.
        let dir = tempfile::tempdir()?;
        let bin = workspace_binary(&format!("meridian-{role}"))?;
        let local = unit.replace(&format!("/usr/local/bin/meridian-{role}"), &bin.display().to_string());
        std::fs::write(dir.path().join(&name), local)?;
        let out = Command::new("systemd-analyze").arg("verify").arg(&name).current_dir(dir.path()).output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(out.status.success(), "systemd-analyze verify {name}: {stderr}");
        // Unknown keys and bad values are warnings: none allowed.
        let complaints: Vec<&str> = stderr.lines().filter(|l| l.contains(&name)).collect();
        ensure!(complaints.is_empty(), "systemd-analyze verify {name}:\n{}", complaints.join("\n"));
    }
    Ok(())
}
