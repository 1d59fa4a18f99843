//! The lab's own apt-cacher-ng: bound to the bridge address only, with its own configuration,
//! cache and pid file under the state directory, forwarding to the host's Debian mirrors. It is
//! the nodes' only way to packages. The distribution's apt-cacher-ng service is never used.

use std::fs::OpenOptions;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::host;
use super::mirror::{self, Mirrors};
use super::topology::BRIDGE_ADDRESS;

/// The proxy's port on the bridge address.
pub const PORT: u16 = 3142;

/// The proxy URL nodes (and debootstrap) use.
pub fn url() -> String {
    format!("http://{BRIDGE_ADDRESS}:{PORT}")
}

/// The proxy's files under `<state>/proxy`.
pub struct Proxy {
    dir: PathBuf,
}

impl Proxy {
    pub fn new(dir: PathBuf) -> Proxy {
        Proxy { dir }
    }

    fn config_dir(&self) -> PathBuf {
        self.dir.join("config")
    }

    fn pid_file(&self) -> PathBuf {
        self.dir.join("apt-cacher-ng.pid")
    }

    fn log_dir(&self) -> PathBuf {
        self.dir.join("log")
    }

    /// The running proxy's pid, from its pid file.
    pub fn pid(&self) -> Option<u32> {
        host::live_pid(&self.pid_file(), "apt-cacher-ng")
    }

    /// Start the proxy unless it runs. True if started.
    pub fn ensure(&self, mirrors: &Mirrors) -> Result<bool> {
        if self.pid().is_some() {
            return Ok(false);
        }
        check_port_free()?;
        for dir in [self.config_dir(), self.dir.join("cache"), self.log_dir()] {
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("failed to create `{}`", dir.display()))?;
        }
        let config = self.config_dir().join("acng.conf");
        std::fs::write(&config, self.config(mirrors))
            .with_context(|| format!("failed to write `{}`", config.display()))?;
        let console = self.log_dir().join("console.log");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&console)
            .with_context(|| format!("failed to open `{}`", console.display()))?;
        let mut command = Command::new("setsid");
        command
            .arg("apt-cacher-ng")
            .arg("-c")
            .arg(self.config_dir())
            .arg("ForeGround=1")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        host::close_inherited_descriptors(&mut command);
        let mut child = command.spawn().context("failed to start `apt-cacher-ng`")?;
        std::fs::write(self.pid_file(), format!("{}\n", child.id()))
            .with_context(|| format!("failed to write `{}`", self.pid_file().display()))?;
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if port_open() {
                return Ok(true);
            }
            if let Some(status) = child.try_wait()? {
                bail!(
                    "`apt-cacher-ng` exited at start ({status}); hint: see `{}` and `{}`",
                    console.display(),
                    self.log_dir().join("apt-cacher.err").display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!(
            "`apt-cacher-ng` did not listen on `{}` within 15 s; hint: see `{}`",
            url(),
            console.display()
        )
    }

    /// Stop the proxy if it runs. True if it was running.
    pub fn stop(&self) -> Result<bool> {
        let Some(pid) = self.pid() else {
            return Ok(false);
        };
        host::signal(pid, "TERM")?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while host::process_alive(pid, "apt-cacher-ng") {
            if Instant::now() > deadline {
                host::signal(pid, "KILL")?;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = std::fs::remove_file(self.pid_file());
        Ok(true)
    }

    fn config(&self, mirrors: &Mirrors) -> String {
        config_text(&self.dir, mirrors)
    }
}

/// apt-cacher-ng's configuration: requests for the host's mirrors (by their URL or the
/// `/debian`, `/debian-security` shortcuts) are served from the cache or fetched from them.
fn config_text(dir: &Path, mirrors: &Mirrors) -> String {
    let mut text = format!(
        "# written by `pgha lab`; rewritten on every start\n\
         CacheDir: {cache}\n\
         LogDir: {log}\n\
         SupportDir: /usr/lib/apt-cacher-ng\n\
         BindAddress: {BRIDGE_ADDRESS}\n\
         Port: {PORT}\n\
         PidFile: {dir}/apt-cacher-ng.pid\n\
         SocketPath: {dir}/socket\n\
         ReportPage: acng-report.html\n\
         ExThreshold: 4\n\
         Remap-debrep: {debian_pattern} /debian ; {debian}/\n",
        cache = dir.join("cache").display(),
        log = dir.join("log").display(),
        dir = dir.display(),
        debian_pattern = mirror::host_and_path(&mirrors.debian),
        debian = mirrors.debian,
    );
    if let Some(security) = &mirrors.security {
        text.push_str(&format!(
            "Remap-secdeb: {} /debian-security ; {security}/\n",
            mirror::host_and_path(security)
        ));
    }
    text
}

fn address() -> SocketAddr {
    SocketAddr::from((BRIDGE_ADDRESS, PORT))
}

fn port_open() -> bool {
    TcpStream::connect_timeout(&address(), Duration::from_millis(200)).is_ok()
}

/// Fail if something else listens on the proxy's port on the bridge or on every address.
fn check_port_free() -> Result<()> {
    let table =
        std::fs::read_to_string("/proc/net/tcp").context("failed to read `/proc/net/tcp`")?;
    for line in table.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(local), Some(state)) = (fields.get(1), fields.get(3)) else {
            continue;
        };
        let Some((address, port)) = local.split_once(':') else {
            continue;
        };
        let listening = *state == "0A";
        let port = u16::from_str_radix(port, 16).unwrap_or_default();
        let address = u32::from_str_radix(address, 16).map(|raw| Ipv4Addr::from(u32::from_be(raw)));
        let clashes =
            matches!(address, Ok(address) if address == BRIDGE_ADDRESS || address.is_unspecified());
        if listening && port == PORT && clashes {
            bail!(
                "port {PORT} is already in use on `{BRIDGE_ADDRESS}`; \
                 hint: stop the program listening there (e.g. `systemctl stop apt-cacher-ng`; see `ss -ltnp`)"
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_binds_the_bridge_and_remaps_the_host_mirrors() {
        let mirrors = Mirrors {
            debian: "http://m.example/debian".to_string(),
            security: Some("http://m.example/debian-security".to_string()),
        };
        let text = config_text(Path::new("/state/proxy"), &mirrors);
        assert!(text.contains("BindAddress: 10.231.0.1\n"));
        assert!(text.contains("Port: 3142\n"));
        assert!(text.contains("CacheDir: /state/proxy/cache\n"));
        assert!(
            text.contains("Remap-debrep: m.example/debian /debian ; http://m.example/debian/\n")
        );
        assert!(text.contains("Remap-secdeb: m.example/debian-security /debian-security ; http://m.example/debian-security/\n"));
    }
}
