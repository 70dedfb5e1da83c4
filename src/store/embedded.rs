//! The embedded default: a private PostgreSQL started from the binaries installed on the
//! machine, with its data under the user's data directory, reachable only through a Unix
//! socket in that directory, and stopped when this process ends.
//!
//! Layout of the data directory:
//! - `agentcrm.lock`: held (flock) for the life of the process, so two servers never share a cluster;
//! - `pgdata/`: the cluster, created by `initdb` on first start (atomically, via a rename);
//! - `run/`: the socket directory (or a short path under /tmp when the data directory is too deep);
//! - `postgres.log`: the server's own log.

use std::ffi::{CStr, CString};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sqlx::postgres::PgConnectOptions;

/// The superuser `initdb` creates, and the database agentcrm keeps its data in (the
/// statements in `create_database` spell it out: SQL text is never formatted).
const DB_USER: &str = "agentcrm";
const DB_NAME: &str = "agentcrm";
/// The system user the private server runs as when agentcrm itself runs as root.
const SYSTEM_USER: &str = "agentcrm";
/// `sun_path` holds 108 bytes; PostgreSQL appends `/.s.PGSQL.5432`.
const MAX_SOCKET_DIR_LEN: usize = 90;
const START_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    #[error(
        "no PostgreSQL server binaries (initdb, postgres) were found on PATH or under \
         /usr/lib/postgresql/*/bin (or in AGENTCRM_PG_BIN). Install PostgreSQL 14 or newer (Debian/Ubuntu: \
         `apt install postgresql`; macOS: `brew install postgresql`), or set DATABASE_URL \
         to use an existing server"
    )]
    NotInstalled,
    #[error(
        "the data directory {dir} is in use by another agentcrm server{pid}; stop that \
         server, or give this one its own directory with AGENTCRM_DATA_DIR (or set \
         DATABASE_URL to share a PostgreSQL server between processes)"
    )]
    Locked { dir: PathBuf, pid: String },
    #[error(
        "the cluster in {dir} was created by PostgreSQL {cluster}, but only PostgreSQL \
         {available} is installed; install PostgreSQL {cluster} or move the data directory aside"
    )]
    VersionMismatch {
        dir: PathBuf,
        cluster: String,
        available: String,
    },
    #[error(
        "PostgreSQL runs as the unprivileged user `{user}` and cannot reach {dir} (a parent \
         directory is not traversable by other users); set AGENTCRM_DATA_DIR to a directory \
         outside a private home directory, e.g. /var/lib/agentcrm"
    )]
    Unreachable { user: String, dir: PathBuf },
    #[error("could not {action}: {source}")]
    Io {
        action: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{step} failed: {detail}")]
    Command { step: String, detail: String },
    #[error("{0}")]
    RunAs(String),
}

fn io(action: impl Into<String>) -> impl FnOnce(std::io::Error) -> EmbeddedError {
    let action = action.into();
    move |source| EmbeddedError::Io { action, source }
}

/// PostgreSQL server binaries of one installation.
#[derive(Debug, Clone)]
struct Binaries {
    initdb: PathBuf,
    postgres: PathBuf,
    /// Major version, as `PG_VERSION` files spell it ("15", "16", ...).
    major: String,
}

/// The identity the server processes run as.
#[derive(Debug, Clone)]
struct RunAs {
    /// `None`: this process's own user.
    ids: Option<(u32, u32)>,
    name: String,
}

pub struct EmbeddedPostgres {
    socket_dir: PathBuf,
    child: Option<Child>,
    log_path: PathBuf,
    /// What it takes to start the server again (see [`EmbeddedPostgres::restart_if_exited`]).
    bins: Binaries,
    pgdata: PathBuf,
    run_as: RunAs,
    /// It exited and did not start again yet: the next check tries again.
    lost: bool,
    /// Released (closed) only after the server has stopped.
    _lock: File,
}

impl EmbeddedPostgres {
    /// Starts (creating on first use) the private server for `data_dir`. Blocking: call it
    /// before the async runtime is busy, from the thread that lives as long as the process.
    pub fn start(data_dir: &Path) -> Result<EmbeddedPostgres, EmbeddedError> {
        let started = Instant::now();
        let run_as = run_as()?;
        let root = run_as.ids.is_some();
        create_dir(data_dir, if root { 0o711 } else { 0o700 })?;
        let data_dir = fs::canonicalize(data_dir).map_err(io("resolve the data directory"))?;
        let lock = lock(&data_dir)?;
        if root {
            // PostgreSQL must reach its directories through every parent.
            fs::set_permissions(&data_dir, fs::Permissions::from_mode(0o711))
                .map_err(io("make the data directory traversable"))?;
            check_traversable(&data_dir, &run_as)?;
        }

        let pgdata = data_dir.join("pgdata");
        let cluster_version = fs::read_to_string(pgdata.join("PG_VERSION"))
            .ok()
            .map(|v| v.trim().to_owned());
        let bins = find_binaries(cluster_version.as_deref())?;
        if let Some(cluster) = &cluster_version
            && *cluster != bins.major
        {
            return Err(EmbeddedError::VersionMismatch {
                dir: pgdata,
                cluster: cluster.clone(),
                available: bins.major,
            });
        }
        if cluster_version.is_none() {
            init_cluster(&data_dir, &pgdata, &bins, &run_as)?;
        }
        stop_orphan(&pgdata);

        let socket_dir = socket_dir(&data_dir);
        create_dir(&socket_dir, 0o700)?;
        chown(&socket_dir, &run_as)?;
        let log_path = data_dir.join("postgres.log");
        let child = spawn_server(&bins, &pgdata, &socket_dir, &log_path, &run_as)?;
        let mut pg = EmbeddedPostgres {
            socket_dir,
            child: Some(child),
            log_path,
            bins,
            pgdata,
            run_as,
            lost: false,
            _lock: lock,
        };
        pg.wait_ready()?;
        pg.create_database()?;
        tracing::info!(
            data_dir = %data_dir.display(),
            version = %pg.bins.major,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "embedded PostgreSQL ready"
        );
        Ok(pg)
    }

    pub fn connect_options(&self) -> PgConnectOptions {
        self.options(DB_NAME)
    }

    fn options(&self, database: &str) -> PgConnectOptions {
        PgConnectOptions::new()
            .socket(&self.socket_dir)
            .username(DB_USER)
            .database(database)
            .application_name("agentcrm")
    }

    /// Polls with `psql`-free connection attempts until the server accepts connections.
    fn wait_ready(&mut self) -> Result<(), EmbeddedError> {
        let deadline = Instant::now() + START_TIMEOUT;
        let socket = self.socket_dir.join(".s.PGSQL.5432");
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(EmbeddedError::Command {
                    step: "starting PostgreSQL".into(),
                    detail: format!("the server exited ({status}); {}", self.log_tail()),
                });
            }
            // The socket appears once the postmaster listens; `postmaster.pid` says "ready"
            // only after recovery, so try a real connection.
            if socket.exists() && self.block_on_query("postgres", "SELECT 1").is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(EmbeddedError::Command {
                    step: "starting PostgreSQL".into(),
                    detail: format!("not ready after {START_TIMEOUT:?}; {}", self.log_tail()),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn create_database(&self) -> Result<(), EmbeddedError> {
        let exists = self
            .block_on_query(
                "postgres",
                "SELECT 1 FROM pg_database WHERE datname = 'agentcrm'",
            )
            .map_err(|e| EmbeddedError::Command {
                step: "checking the agentcrm database".into(),
                detail: e.to_string(),
            })?;
        if !exists {
            self.block_on_query("postgres", "CREATE DATABASE agentcrm")
                .map_err(|e| EmbeddedError::Command {
                    step: "creating the agentcrm database".into(),
                    detail: e.to_string(),
                })?;
        }
        Ok(())
    }

    /// Runs one fixed statement (never caller input) on a short-lived runtime; returns
    /// whether it produced a row.
    fn block_on_query(&self, database: &str, sql: &'static str) -> Result<bool, sqlx::Error> {
        use sqlx::{Connection, Executor};
        let options = self.options(database);
        // A thread of its own: this may be called from inside the main async runtime.
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(sqlx::Error::Io)?;
                    runtime.block_on(async move {
                        let mut conn = sqlx::PgConnection::connect_with(&options).await?;
                        let row = conn.fetch_optional(sql).await?;
                        let _ = conn.close().await;
                        Ok(row.is_some())
                    })
                })
                .join()
                .unwrap_or_else(|_| Err(sqlx::Error::PoolClosed))
        })
    }

    fn log_tail(&self) -> String {
        let mut text = String::new();
        if let Ok(mut file) = File::open(&self.log_path) {
            let len = file.metadata().map(|m| m.len()).unwrap_or(0);
            let _ = file.seek(SeekFrom::Start(len.saturating_sub(2000)));
            let _ = file.read_to_string(&mut text);
        }
        let text = text.trim();
        if text.is_empty() {
            format!("see {}", self.log_path.display())
        } else {
            format!("{} says:\n{text}", self.log_path.display())
        }
    }

    /// Fast shutdown: running transactions are rolled back, then the server exits.
    /// Starts the server again if it exited while this process still needs it (killed, or
    /// crashed): `Ok(true)` once it is back. Blocking.
    pub fn restart_if_exited(&mut self) -> Result<bool, EmbeddedError> {
        let exited = match self.child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(Some(status))) => status.to_string(),
            Some(Err(error)) => error.to_string(),
            Some(Ok(None)) => return Ok(false),
            None if self.lost => "it did not start again".to_owned(),
            // Not ours to run (being stopped).
            None => return Ok(false),
        };
        tracing::error!(
            exited = %exited,
            "embedded PostgreSQL exited while agentcrm still needs it; restarting it"
        );
        self.child = None;
        self.lost = true;
        stop_orphan(&self.pgdata);
        let child = spawn_server(
            &self.bins,
            &self.pgdata,
            &self.socket_dir,
            &self.log_path,
            &self.run_as,
        )?;
        self.child = Some(child);
        self.wait_ready()?;
        self.lost = false;
        tracing::warn!("embedded PostgreSQL restarted");
        Ok(true)
    }

    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = child.id() as libc::pid_t;
        // SAFETY: signalling our own child, which we have not reaped yet.
        unsafe { libc::kill(pid, libc::SIGINT) };
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            match child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() > deadline => {
                    tracing::warn!("embedded PostgreSQL did not stop in time; sending SIGQUIT");
                    // SAFETY: as above.
                    unsafe { libc::kill(pid, libc::SIGQUIT) };
                    let _ = child.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        tracing::info!("embedded PostgreSQL stopped");
    }
}

impl Drop for EmbeddedPostgres {
    fn drop(&mut self) {
        self.stop();
    }
}

fn create_dir(dir: &Path, mode: u32) -> Result<(), EmbeddedError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)
        .map_err(io(format!("create {}", dir.display())))
}

/// Takes the data directory's lock, or says who holds it.
fn lock(data_dir: &Path) -> Result<File, EmbeddedError> {
    let path = data_dir.join("agentcrm.lock");
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io(format!("open {}", path.display())))?;
    // SAFETY: flock on a descriptor we own.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let mut holder = String::new();
        let _ = file.read_to_string(&mut holder);
        let holder = holder.trim();
        return Err(EmbeddedError::Locked {
            dir: data_dir.to_owned(),
            pid: if holder.is_empty() {
                String::new()
            } else {
                format!(" (pid {holder})")
            },
        });
    }
    let _ = file.set_len(0);
    let _ = write!(file, "{}", std::process::id());
    Ok(file)
}

/// Candidate installations: `AGENTCRM_PG_BIN` alone when set; otherwise directories on PATH
/// holding both binaries, then `/usr/lib/postgresql/<major>/bin`, highest major first. An
/// existing cluster picks the installation of its own version when there is one.
fn find_binaries(cluster_version: Option<&str>) -> Result<Binaries, EmbeddedError> {
    let candidates = match std::env::var_os("AGENTCRM_PG_BIN").filter(|v| !v.is_empty()) {
        Some(dir) => vec![PathBuf::from(dir)],
        None => candidate_dirs(),
    };
    let mut found = Vec::new();
    for dir in candidates {
        let (initdb, postgres) = (dir.join("initdb"), dir.join("postgres"));
        if is_executable(&initdb)
            && is_executable(&postgres)
            && let Some(major) = server_major(&postgres)
        {
            found.push(Binaries {
                initdb,
                postgres,
                major,
            });
        }
    }
    if let Some(wanted) = cluster_version
        && let Some(matching) = found.iter().find(|b| b.major == wanted)
    {
        return Ok(matching.clone());
    }
    found.into_iter().next().ok_or(EmbeddedError::NotInstalled)
}

fn candidate_dirs() -> Vec<PathBuf> {
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect())
        .unwrap_or_default();
    let mut versioned: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter_map(|e| {
                    let major = e.file_name().to_str()?.parse::<u32>().ok()?;
                    Some((major, e.path().join("bin")))
                })
                .collect()
        })
        .unwrap_or_default();
    versioned.sort_by_key(|(major, _)| std::cmp::Reverse(*major));
    candidates.extend(versioned.into_iter().map(|(_, dir)| dir));
    candidates
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// "postgres (PostgreSQL) 15.19 (Debian ...)" -> "15"; "9.6.3" -> "9.6".
fn server_major(postgres: &Path) -> Option<String> {
    let out = Command::new(postgres).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text.split_whitespace().nth(2)?;
    let mut parts = version.split('.');
    let major = parts.next()?;
    if major.parse::<u32>().ok()? < 10 {
        Some(format!("{major}.{}", parts.next()?))
    } else {
        Some(major.to_owned())
    }
}

/// As root, the server runs as the `agentcrm` system user (created on first use);
/// otherwise as this process's own user.
fn run_as() -> Result<RunAs, EmbeddedError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(RunAs {
            ids: None,
            name: "current user".into(),
        });
    }
    let user = std::env::var("AGENTCRM_PG_USER").unwrap_or_else(|_| SYSTEM_USER.to_owned());
    if let Some(ids) = lookup_user(&user) {
        return Ok(RunAs {
            ids: Some(ids),
            name: user,
        });
    }
    let status = Command::new("useradd")
        .args([
            "--system",
            "--no-create-home",
            "--home-dir",
            "/nonexistent",
            "--shell",
            "/usr/sbin/nologin",
            "--comment",
            "agentcrm embedded PostgreSQL",
            &user,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output();
    // Several servers may start at once on a fresh machine: another one's useradd may hold
    // the passwd lock or have just created the user.
    let mut created = lookup_user(&user);
    for _ in 0..20 {
        if created.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        created = lookup_user(&user);
    }
    match (status, created) {
        (_, Some(ids)) => Ok(RunAs {
            ids: Some(ids),
            name: user,
        }),
        (Ok(out), None) => Err(EmbeddedError::RunAs(format!(
            "PostgreSQL refuses to run as root and the system user `{user}` could not be \
             created ({}); create an unprivileged user and name it in AGENTCRM_PG_USER, or \
             run agentcrm as a normal user",
            String::from_utf8_lossy(&out.stderr).trim()
        ))),
        (Err(e), None) => Err(EmbeddedError::RunAs(format!(
            "PostgreSQL refuses to run as root and `useradd` could not be run ({e}); create an \
             unprivileged user and name it in AGENTCRM_PG_USER, or run agentcrm as a normal user"
        ))),
    }
}

fn lookup_user(name: &str) -> Option<(u32, u32)> {
    let name = CString::new(name).ok()?;
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 4096];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: all pointers are valid for the sizes given; getpwnam_r is thread-safe.
    let rc = unsafe {
        libc::getpwnam_r(
            name.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 || result.is_null() {
        return None;
    }
    Some((pwd.pw_uid, pwd.pw_gid))
}

/// Every parent must let "others" search it, or the unprivileged server cannot start.
fn check_traversable(dir: &Path, run_as: &RunAs) -> Result<(), EmbeddedError> {
    for parent in dir.ancestors().skip(1) {
        let mode = fs::metadata(parent)
            .map(|m| m.permissions().mode())
            .unwrap_or(0);
        if mode & 0o001 == 0 {
            return Err(EmbeddedError::Unreachable {
                user: run_as.name.clone(),
                dir: dir.to_owned(),
            });
        }
    }
    Ok(())
}

fn chown(path: &Path, run_as: &RunAs) -> Result<(), EmbeddedError> {
    if let Some((uid, gid)) = run_as.ids {
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(io(format!(
            "hand {} to the PostgreSQL user",
            path.display()
        )))?;
    }
    Ok(())
}

fn command_as(program: &Path, run_as: &RunAs, cwd: &Path) -> Command {
    let mut command = Command::new(program);
    command.current_dir(cwd).env_remove("PGDATA");
    if let Some((uid, gid)) = run_as.ids {
        // std drops supplementary groups when a root parent sets the uid.
        command.uid(uid).gid(gid);
    }
    command
}

/// `initdb` into a scratch directory renamed into place, so a start interrupted half-way
/// never leaves a half-made cluster behind.
fn init_cluster(
    data_dir: &Path,
    pgdata: &Path,
    bins: &Binaries,
    run_as: &RunAs,
) -> Result<(), EmbeddedError> {
    let scratch = data_dir.join("pgdata.initdb");
    if scratch.exists() {
        fs::remove_dir_all(&scratch).map_err(io("remove an unfinished cluster"))?;
    }
    create_dir(&scratch, 0o700)?;
    chown(&scratch, run_as)?;
    let out = command_as(&bins.initdb, run_as, data_dir)
        .arg("--pgdata")
        .arg(&scratch)
        .args([
            "--username",
            DB_USER,
            // Only this user can reach the socket directory (0700): trust is scoped by it.
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-instructions",
        ])
        .stdin(Stdio::null())
        .output()
        .map_err(io(format!("run {}", bins.initdb.display())))?;
    if !out.status.success() {
        let _ = fs::remove_dir_all(&scratch);
        return Err(EmbeddedError::Command {
            step: "initdb".into(),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    fs::rename(&scratch, pgdata).map_err(io("move the new cluster into place"))?;
    tracing::info!(pgdata = %pgdata.display(), "created embedded PostgreSQL cluster");
    Ok(())
}

/// A server left running by an agentcrm that was killed (we hold the lock, so it is
/// nobody's): ask it to stop before starting our own.
fn stop_orphan(pgdata: &Path) {
    let pid_file = pgdata.join("postmaster.pid");
    let Some(pid) = fs::read_to_string(&pid_file)
        .ok()
        .and_then(|text| text.lines().next()?.trim().parse::<libc::pid_t>().ok())
    else {
        return;
    };
    // SAFETY: signal 0 only checks that the process exists.
    if pid <= 0 || unsafe { libc::kill(pid, 0) } != 0 {
        return;
    }
    if !is_postmaster_of(pid, pgdata) {
        return;
    }
    tracing::warn!(pid, "stopping an orphaned embedded PostgreSQL");
    // SAFETY: pid is a live postgres serving our own cluster.
    unsafe { libc::kill(pid, libc::SIGINT) };
    let deadline = Instant::now() + STOP_TIMEOUT;
    while pid_file.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn is_postmaster_of(pid: libc::pid_t, pgdata: &Path) -> bool {
    let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let cmdline = String::from_utf8_lossy(&cmdline);
    cmdline.contains("postgres") && cmdline.contains(pgdata.to_string_lossy().as_ref())
}

fn socket_dir(data_dir: &Path) -> PathBuf {
    let preferred = data_dir.join("run");
    if preferred.as_os_str().len() <= MAX_SOCKET_DIR_LEN {
        return preferred;
    }
    // Deep data directories cannot hold a socket path; use a short private one instead.
    let mut hash: u64 = 0xcbf29ce484222325;
    for byte in data_dir.as_os_str().as_encoded_bytes() {
        hash = (hash ^ u64::from(*byte)).wrapping_mul(0x100000001b3);
    }
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    PathBuf::from(format!("/tmp/agentcrm-{uid}-{hash:016x}"))
}

fn spawn_server(
    bins: &Binaries,
    pgdata: &Path,
    socket_dir: &Path,
    log_path: &Path,
    run_as: &RunAs,
) -> Result<Child, EmbeddedError> {
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .map_err(io(format!("open {}", log_path.display())))?;
    let log_err = log.try_clone().map_err(io("open the PostgreSQL log"))?;
    let mut command = command_as(&bins.postgres, run_as, pgdata);
    command
        .arg("-D")
        .arg(pgdata)
        .args(["-c", "listen_addresses="])
        .arg("-c")
        .arg(format!("unix_socket_directories={}", socket_dir.display()))
        .args([
            "-c",
            "unix_socket_permissions=0700",
            "-c",
            "max_connections=64",
        ])
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        // Its own process group: a terminal's Ctrl-C reaches agentcrm, which then stops the
        // server after closing its connections.
        .process_group(0);
    // SAFETY: prctl is async-signal-safe. It runs after the uid change, which would clear it.
    // The parent-death signal is tied to the spawning thread; `start` runs on the main thread.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGINT) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command
        .spawn()
        .map_err(io(format!("run {}", bins.postgres.display())))
}

/// The user's data directory: `$XDG_DATA_HOME/agentcrm` or `~/.local/share/agentcrm`;
/// `/var/lib/agentcrm` for root, whose home the unprivileged server cannot enter.
pub fn default_data_dir() -> PathBuf {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from("/var/lib/agentcrm");
    }
    if let Some(xdg) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(xdg).join("agentcrm");
    }
    if let Some(home) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(home).join(".local/share/agentcrm");
    }
    home_from_passwd()
        .map(|home| home.join(".local/share/agentcrm"))
        .unwrap_or_else(|| PathBuf::from("agentcrm-data"))
}

fn home_from_passwd() -> Option<PathBuf> {
    // SAFETY: getpwuid returns a pointer into static storage or null; we copy out at once.
    unsafe {
        let pwd = libc::getpwuid(libc::getuid());
        if pwd.is_null() || (*pwd).pw_dir.is_null() {
            return None;
        }
        let dir = CStr::from_ptr((*pwd).pw_dir).to_string_lossy().into_owned();
        Some(PathBuf::from(dir))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_data_dirs_get_a_short_socket_dir() {
        let short = socket_dir(Path::new("/var/lib/agentcrm"));
        assert_eq!(short, Path::new("/var/lib/agentcrm/run"));
        let deep = PathBuf::from(format!("/tmp/{}", "d".repeat(120)));
        let socket = socket_dir(&deep);
        assert!(
            socket.to_string_lossy().starts_with("/tmp/agentcrm-"),
            "{}",
            socket.display()
        );
        assert!(socket.as_os_str().len() <= MAX_SOCKET_DIR_LEN);
        assert_eq!(socket, socket_dir(&deep), "stable for one directory");
    }

    #[test]
    fn installed_postgres_is_found() {
        // The machines this project runs on have PostgreSQL installed (SPEC §5).
        let bins = find_binaries(None).expect("PostgreSQL binaries");
        assert!(bins.major.parse::<u32>().expect("numeric major") >= 14);
    }
}
