//! The C API of librados and librbd (Ceph 16), loaded at run time: the only unsafe code of
//! the RBD volume, kept here and small.
//!
//! Why loaded at run time (with the `libloading` crate) and not linked: `mgear` builds and
//! runs on hosts without Ceph (no `-dev` packages, no bindgen/libclang at build time), and
//! only an `rbd:`/`cinder:` ingest needs librbd; a host without it gets an error naming the
//! package (`apt-get install librbd1`). There is no maintained Rust binding to link instead
//! (`librbd-sys` 0.1.0 dates from 2016; `ceph-rbd` is half stubs). Only the functions used are
//! declared, with the signatures of `rados/librados.h` and `rbd/librbd.h`.
//!
//! What it offers: a [`Cluster`] (a connected rados client and one pool's I/O context), an
//! [`Image`] opened read-write or read-only, and [`Image::run`], which keeps up to `depth`
//! asynchronous requests (writes, write-zeroes, reads) in flight: RBD is latency-bound, one
//! request at a time is far below what the cluster takes. [`Image::stored_digests`] has the
//! OSDs checksum object ranges (rados read operations: stat + XXH64 checksum), the read-back
//! without the bytes.

use std::collections::VecDeque;
use std::ffi::{c_char, c_int, c_void, CString};
use std::marker::PhantomData;
use std::sync::{Arc, OnceLock};

use libloading::Library;

use crate::{DigestHasher, Error, Result, StoredDigest};

type RadosT = *mut c_void;
type IoctxT = *mut c_void;
type ImageT = *mut c_void;
type CompletionT = *mut c_void;
type ReadOpT = *mut c_void;
type CallbackT = Option<unsafe extern "C" fn(CompletionT, *mut c_void)>;
type DiffCb = unsafe extern "C" fn(u64, usize, c_int, *mut c_void) -> c_int;

/// `RBD_FEATURE_FAST_DIFF`: the object map can say which objects exist.
const FEATURE_FAST_DIFF: u64 = 1 << 4;
/// `RBD_FLAG_FAST_DIFF_INVALID`: the object map cannot be trusted (rebuild it).
const FLAG_FAST_DIFF_INVALID: u64 = 1 << 1;
/// What a diff callback returns to stop the walk early (any negative value does; this one is
/// not an errno librbd would return itself).
const STOP_WALK: c_int = -9000;

/// Declares the functions used and loads them out of the two libraries.
macro_rules! api {
    ($( $lib:ident fn $name:ident ( $($arg:ty),* ) $(-> $ret:ty)? ; )*) => {
        /// The C functions used, resolved once.
        struct Api {
            $( $name: unsafe extern "C" fn($($arg),*) $(-> $ret)?, )*
        }

        impl Api {
            fn load(rados: &Library, rbd: &Library) -> std::result::Result<Api, String> {
                Ok(Api {
                    $( $name: {
                        let lib = match stringify!($lib) {
                            "rados" => rados,
                            _ => rbd,
                        };
                        // SAFETY: the type is the function's signature in the Ceph 16 header
                        // (rados/librados.h, rbd/librbd.h); the pointer is copied out, and the
                        // libraries it points into stay loaded for the life of the process
                        // (`LIBS` is never dropped).
                        unsafe {
                            *lib.get::<unsafe extern "C" fn($($arg),*) $(-> $ret)?>(
                                concat!(stringify!($name), "\0").as_bytes(),
                            )
                            .map_err(|e| format!("{} has no {}: {e}", stringify!($lib), stringify!($name)))?
                        }
                    }, )*
                })
            }
        }
    };
}

api! {
    rados fn rados_create(*mut RadosT, *const c_char) -> c_int;
    rados fn rados_conf_read_file(RadosT, *const c_char) -> c_int;
    rados fn rados_conf_parse_env(RadosT, *const c_char) -> c_int;
    rados fn rados_conf_set(RadosT, *const c_char, *const c_char) -> c_int;
    rados fn rados_connect(RadosT) -> c_int;
    rados fn rados_ioctx_create(RadosT, *const c_char, *mut IoctxT) -> c_int;
    rados fn rados_ioctx_destroy(IoctxT);
    rados fn rados_shutdown(RadosT);
    rados fn rados_ioctx_get_id(IoctxT) -> i64;
    rados fn rados_create_read_op() -> ReadOpT;
    rados fn rados_release_read_op(ReadOpT);
    rados fn rados_read_op_stat(ReadOpT, *mut u64, *mut nix::libc::time_t, *mut c_int);
    rados fn rados_read_op_checksum(ReadOpT, c_int, *const c_char, usize, u64, usize, usize, *mut c_char, usize, *mut c_int);
    rados fn rados_aio_create_completion2(*mut c_void, CallbackT, *mut CompletionT) -> c_int;
    rados fn rados_aio_read_op_operate(ReadOpT, IoctxT, CompletionT, *const c_char, c_int) -> c_int;
    rados fn rados_aio_wait_for_complete(CompletionT) -> c_int;
    rados fn rados_aio_get_return_value(CompletionT) -> c_int;
    rados fn rados_aio_release(CompletionT);
    rbd fn rbd_create(IoctxT, *const c_char, u64, *mut c_int) -> c_int;
    rbd fn rbd_open(IoctxT, *const c_char, *mut ImageT, *const c_char) -> c_int;
    rbd fn rbd_open_read_only(IoctxT, *const c_char, *mut ImageT, *const c_char) -> c_int;
    rbd fn rbd_close(ImageT) -> c_int;
    rbd fn rbd_get_size(ImageT, *mut u64) -> c_int;
    rbd fn rbd_resize(ImageT, u64) -> c_int;
    rbd fn rbd_get_features(ImageT, *mut u64) -> c_int;
    rbd fn rbd_get_flags(ImageT, *mut u64) -> c_int;
    rbd fn rbd_flush(ImageT) -> c_int;
    rbd fn rbd_diff_iterate2(ImageT, *const c_char, u64, u64, u8, u8, Option<DiffCb>, *mut c_void) -> c_int;
    rbd fn rbd_aio_create_completion(*mut c_void, CallbackT, *mut CompletionT) -> c_int;
    rbd fn rbd_aio_write2(ImageT, u64, usize, *const c_char, CompletionT, c_int) -> c_int;
    rbd fn rbd_aio_writev(ImageT, *const nix::libc::iovec, c_int, u64, CompletionT) -> c_int;
    rbd fn rbd_get_stripe_unit(ImageT, *mut u64) -> c_int;
    rbd fn rbd_aio_write_zeroes(ImageT, u64, usize, CompletionT, c_int, c_int) -> c_int;
    rbd fn rbd_aio_read2(ImageT, u64, usize, *mut c_char, CompletionT, c_int) -> c_int;
    rbd fn rbd_aio_wait_for_complete(CompletionT) -> c_int;
    rbd fn rbd_aio_get_return_value(CompletionT) -> isize;
    rbd fn rbd_aio_release(CompletionT);
    rbd fn rbd_get_block_name_prefix(ImageT, *mut c_char, usize) -> c_int;
    rbd fn rbd_get_stripe_count(ImageT, *mut u64) -> c_int;
    rbd fn rbd_get_data_pool_id(ImageT) -> i64;
    rbd fn rbd_get_overlap(ImageT, *mut u64) -> c_int;
    rbd fn rbd_watchers_list(ImageT, *mut Watcher, *mut usize) -> c_int;
    rbd fn rbd_watchers_list_cleanup(*mut Watcher, usize);
}

/// `rbd_image_watcher_t`: a client watching an image (a QEMU that has it open, a writer).
#[repr(C)]
pub(crate) struct Watcher {
    addr: *mut c_char,
    id: i64,
    cookie: u64,
}

/// `LIBRADOS_CHECKSUM_TYPE_XXHASH64`.
const CHECKSUM_XXHASH64: c_int = 1;

/// Where an image's data is, as objects: `{prefix}.{object number:016x}` of `object_size`
/// bytes each, in the image's own pool (see [`Image::object_layout`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ObjectLayout {
    pub prefix: String,
    pub object_size: u64,
}

/// The buffers one asynchronous stat + checksum request fills: boxed, so they stay where
/// librados writes until the request completed.
struct DigestSlot {
    index: usize,
    oid: CString,
    within: u64,
    len: u64,
    op: ReadOpT,
    c: CompletionT,
    size: u64,
    mtime: nix::libc::time_t,
    stat_rval: c_int,
    sum_rval: c_int,
    /// A le32 count of checksums, then each (one le64 here).
    out: [u8; 16],
}

/// The loaded libraries (kept so the function pointers stay valid) and their functions.
struct Libs {
    _rados: Library,
    _rbd: Library,
    api: Api,
}

static LIBS: OnceLock<std::result::Result<Libs, String>> = OnceLock::new();

/// The API, loading the libraries on first use.
fn api() -> Result<&'static Api> {
    LIBS.get_or_init(|| load("librados.so.2", "librbd.so.1"))
        .as_ref()
        .map(|l| &l.api)
        .map_err(|e| Error::Usage(e.clone()))
}

/// Whether librados and librbd load here (the error names the package to install).
pub(crate) fn loadable() -> Result<()> {
    api().map(drop)
}

/// Load the two libraries and resolve the functions; the error names the package to install.
fn load(rados: &str, rbd: &str) -> std::result::Result<Libs, String> {
    let open = |name: &str| {
        // SAFETY: loading runs the library's initialisers; librados and librbd are the
        // distribution's Ceph client libraries, whose initialisers only set up their own state.
        unsafe { Library::new(name) }.map_err(|e| {
            format!(
                "{name} could not be loaded ({e}): rbd: and cinder: targets need Ceph's client \
                 libraries: install them with `apt-get install librbd1`"
            )
        })
    };
    let rados = open(rados)?;
    let rbd = open(rbd)?;
    let api = Api::load(&rados, &rbd).map_err(|e| {
        format!("{e}: the installed librbd1 is too old (Ceph 16 or newer is needed)")
    })?;
    Ok(Libs {
        _rados: rados,
        _rbd: rbd,
        api,
    })
}

/// What a negative errno from `call` means for the operator, and what to do about it.
pub(crate) fn explain(call: &str, errno: i32) -> String {
    let e = nix::errno::Errno::from_raw(errno.saturating_neg());
    let meaning = match (e, call) {
        (nix::errno::Errno::ENOENT, "rbd_open" | "rbd_open_read_only") => {
            "image not found: check the name (rbd ls POOL)".to_string()
        }
        (nix::errno::Errno::ENOENT, "rados_ioctx_create") => {
            "pool not found: check the pool name (ceph osd pool ls)".to_string()
        }
        (nix::errno::Errno::ENOENT, "rados_conf_read_file") => {
            "ceph.conf not found: give conf=PATH or set CEPH_CONF".to_string()
        }
        (nix::errno::Errno::ENOENT, "rados_connect") => {
            "no monitor address or no keyring: check mon_host and keyring in ceph.conf \
             (or CEPH_ARGS), and that the user's keyring exists"
                .to_string()
        }
        (nix::errno::Errno::EEXIST, _) => "image already exists".to_string(),
        (nix::errno::Errno::EACCES | nix::errno::Errno::EPERM, _) => {
            "permission denied: check the user's keyring and capabilities \
             (ceph auth get client.USER; rbd needs `profile rbd pool=POOL`)"
                .to_string()
        }
        (nix::errno::Errno::ETIMEDOUT, "rados_connect") => {
            "timed out: no monitor answered within 30 s: check mon_host in ceph.conf and that \
             the cluster is up (ceph -s)"
                .to_string()
        }
        (nix::errno::Errno::ETIMEDOUT, _) => {
            "timed out: the cluster did not complete the request within 300 s \
             (rados_osd_op_timeout): an OSD is down or the pool's placement groups are not \
             active (ceph -s, ceph osd tree); the same command resumes once it is up"
                .to_string()
        }
        // librados' EBLOCKLISTED is ESHUTDOWN.
        (nix::errno::Errno::ESHUTDOWN, _) => {
            "this client was blocklisted (another client took the image's lock): \
             run the ingest again"
                .to_string()
        }
        (nix::errno::Errno::EROFS, _) => {
            "the image is read-only (a snapshot, or opened read-only)".to_string()
        }
        (nix::errno::Errno::ENOSPC | nix::errno::Errno::EDQUOT, _) => {
            "the pool is full or over its quota: free space or raise the quota".to_string()
        }
        (nix::errno::Errno::EBUSY, _) => {
            "the image is busy (locked or in use by another client)".to_string()
        }
        _ => std::io::Error::from_raw_os_error(errno.saturating_neg()).to_string(),
    };
    format!("{meaning} (-{e:?})")
}

/// A librados/librbd call's negative return value as this crate's error.
fn ceph_err(call: &'static str, what: &str, ret: i64) -> Error {
    let errno = i32::try_from(ret).unwrap_or(i32::MIN);
    Error::Ceph {
        call,
        what: what.to_string(),
        errno,
        meaning: explain(call, errno),
    }
}

/// `Ok` for a non-negative return value.
fn check(call: &'static str, what: &str, ret: c_int) -> Result<()> {
    if ret < 0 {
        Err(ceph_err(call, what, ret.into()))
    } else {
        Ok(())
    }
}

fn cstring(what: &str, s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| Error::Usage(format!("{what} {s:?} contains a NUL byte")))
}

/// Seconds an OSD or monitor operation may take before it fails with `ETIMEDOUT` (librados'
/// own defaults are 0: wait for ever), as `mgear` sets them unless the cluster's conf says
/// otherwise.
const DEFAULT_TIMEOUTS: [(&str, &str); 2] = [
    ("rados_osd_op_timeout", "300"),
    ("rados_mon_op_timeout", "300"),
];

/// How to reach a cluster.
#[derive(Debug, Clone, Default)]
pub(crate) struct Connect {
    /// ceph.conf; librados' default search (`/etc/ceph/ceph.conf`, ...) when `None`.
    pub conf: Option<std::path::PathBuf>,
    /// The user without `client.`; `admin` when `None`.
    pub user: Option<String>,
    /// Pool.
    pub pool: String,
    /// Options set after the conf and `CEPH_ARGS` (they win over both).
    pub options: Vec<(&'static str, String)>,
    /// For messages: which cluster this is (the target spec).
    pub what: String,
}

/// A connected rados client with one pool's I/O context. Shut down when the last
/// [`Image`] of it is closed.
#[derive(Debug)]
struct ClusterInner {
    rados: RadosT,
    io: IoctxT,
    api: &'static Api,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("librbd")
    }
}

// SAFETY: librados handles may be used from any thread (the library locks internally); the
// pointers are owned by this value and freed once, in its Drop.
unsafe impl Send for ClusterInner {}
// SAFETY: as above: every librados call through a shared handle is thread-safe.
unsafe impl Sync for ClusterInner {}

impl Drop for ClusterInner {
    fn drop(&mut self) {
        // SAFETY: the handles were created by `Cluster::connect` (the I/O context may not have
        // been) and are destroyed once, here, after every image opened through them was closed
        // (images hold an `Arc` of this).
        unsafe {
            if !self.io.is_null() {
                (self.api.rados_ioctx_destroy)(self.io);
            }
            (self.api.rados_shutdown)(self.rados);
        }
    }
}

/// Said before librados prints its own noise ("unable to get monitor info from DNS SRV"), and
/// before qemu's rbd driver does the same for `mgear boot`: which configuration is missing,
/// and the ways to give it. `conf` is the spec's ceph.conf (`conf=`, else `CEPH_CONF`).
pub(crate) fn check_config(conf: Option<&std::path::Path>, what: &str) -> Result<()> {
    if let Some(p) = conf.filter(|p| !p.exists()) {
        return Err(Error::Usage(format!(
            "{}: the ceph.conf it names, {}, does not exist (given as conf= in the target, \
             else by CEPH_CONF): give the path of the cluster's ceph.conf",
            what,
            p.display()
        )));
    }
    let home = std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".ceph/config"));
    let found = ["/etc/ceph/ceph.conf", "ceph.conf"]
        .iter()
        .map(std::path::PathBuf::from)
        .chain(home)
        .any(|p| p.exists());
    let args = std::env::var("CEPH_ARGS").unwrap_or_default();
    if conf.is_none() && !found && !args.contains("mon") {
        return Err(Error::Usage(format!(
            "{}: no Ceph cluster configuration was found (CEPH_CONF is not set, no \
             /etc/ceph/ceph.conf, and CEPH_ARGS names no monitor): set CEPH_CONF to the \
             cluster's ceph.conf, or give conf=PATH in the target (rbd:POOL/IMAGE?conf=PATH)",
            what
        )));
    }
    Ok(())
}

/// A connected cluster and pool; see the module doc.
#[derive(Debug, Clone)]
pub(crate) struct Cluster(Arc<ClusterInner>);

impl Cluster {
    /// Connect: the conf (`c.conf` or librados' default), `CEPH_ARGS`, then `c.options`.
    pub fn connect(c: &Connect) -> Result<Cluster> {
        check_config(c.conf.as_deref(), &c.what)?;
        let api = api()?;
        let user = c.user.as_deref().map(|u| cstring("user", u)).transpose()?;
        let conf = c
            .conf
            .as_ref()
            .map(|p| cstring("ceph.conf path", &p.to_string_lossy()))
            .transpose()?;
        let pool = cstring("pool", &c.pool)?;
        let mut rados: RadosT = std::ptr::null_mut();
        // SAFETY: `rados` is a valid out pointer; `user` is NUL-terminated or null (admin).
        let r = unsafe {
            (api.rados_create)(
                &mut rados,
                user.as_ref().map_or(std::ptr::null(), |u| u.as_ptr()),
            )
        };
        check("rados_create", &c.what, r)?;
        // From here the handle is shut down on every path (also before it connected).
        let mut inner = ClusterInner {
            rados,
            io: std::ptr::null_mut(),
            api,
        };
        // A cluster that stops answering (a frozen OSD or monitor) would hang an ingest for
        // ever: librados waits without limit unless told. Set first, so a ceph.conf or
        // CEPH_ARGS that says otherwise wins.
        for (k, v) in DEFAULT_TIMEOUTS {
            let (key, val) = (cstring("option", k)?, cstring("option value", v)?);
            // SAFETY: both strings are NUL-terminated and outlive the call.
            let r = unsafe { (api.rados_conf_set)(rados, key.as_ptr(), val.as_ptr()) };
            if r < 0 {
                return Err(ceph_err("rados_conf_set", k, r.into()));
            }
        }
        // SAFETY: `rados` is the handle just created; the path is NUL-terminated or null
        // (the default search).
        let r = unsafe {
            (api.rados_conf_read_file)(
                rados,
                conf.as_ref().map_or(std::ptr::null(), |p| p.as_ptr()),
            )
        };
        // Without conf= or CEPH_CONF the cluster may be named in CEPH_ARGS alone; a missing
        // default conf is then no error (connecting says what is missing).
        if r < 0 && (conf.is_some() || r != -(nix::errno::Errno::ENOENT as c_int)) {
            let what = match &c.conf {
                Some(p) => format!("{} ({})", c.what, p.display()),
                None => c.what.clone(),
            };
            return Err(ceph_err("rados_conf_read_file", &what, r.into()));
        }
        // SAFETY: a null variable name means CEPH_ARGS, as every Ceph tool reads it.
        let r = unsafe { (api.rados_conf_parse_env)(rados, std::ptr::null()) };
        if r < 0 {
            return Err(ceph_err("rados_conf_parse_env", "CEPH_ARGS", r.into()));
        }
        for (k, v) in &c.options {
            let (key, val) = (cstring("option", k)?, cstring("option value", v)?);
            // SAFETY: both strings are NUL-terminated and outlive the call.
            let r = unsafe { (api.rados_conf_set)(rados, key.as_ptr(), val.as_ptr()) };
            if r < 0 {
                return Err(ceph_err("rados_conf_set", k, r.into()));
            }
        }
        // SAFETY: the configured handle, not yet connected.
        let r = unsafe { (api.rados_connect)(rados) };
        if r < 0 {
            return Err(ceph_err("rados_connect", &c.what, r.into()));
        }
        let mut io: IoctxT = std::ptr::null_mut();
        // SAFETY: a connected handle, a NUL-terminated pool name and a valid out pointer.
        let r = unsafe { (api.rados_ioctx_create)(rados, pool.as_ptr(), &mut io) };
        if r < 0 {
            return Err(ceph_err("rados_ioctx_create", &c.pool, r.into()));
        }
        inner.io = io;
        Ok(Cluster(Arc::new(inner)))
    }

    /// Create the image `name` of `size` bytes with the cluster's default format and features
    /// (as `rbd create` and `qemu-img create` do): `false` when it already exists.
    pub fn create(&self, name: &str, size: u64) -> Result<bool> {
        let n = cstring("image", name)?;
        // 0: the default object size (4 MiB).
        let mut order: c_int = 0;
        // SAFETY: a live I/O context, a NUL-terminated name and a valid `order` pointer.
        let r = unsafe { (self.0.api.rbd_create)(self.0.io, n.as_ptr(), size, &mut order) };
        if r == -(nix::errno::Errno::EEXIST as c_int) {
            return Ok(false);
        }
        check("rbd_create", name, r)?;
        Ok(true)
    }

    /// Open the image `name`, read-write or read-only (a read-only image never takes the
    /// exclusive lock, so a writer keeps it).
    pub fn open(&self, name: &str, read_only: bool) -> Result<Image> {
        let n = cstring("image", name)?;
        let mut h: ImageT = std::ptr::null_mut();
        let (call, f) = if read_only {
            ("rbd_open_read_only", self.0.api.rbd_open_read_only)
        } else {
            ("rbd_open", self.0.api.rbd_open)
        };
        // SAFETY: a live I/O context, a NUL-terminated name, a valid out pointer and a null
        // snapshot name (the image's head).
        let r = unsafe { f(self.0.io, n.as_ptr(), &mut h, std::ptr::null()) };
        check(call, name, r)?;
        Ok(Image {
            h,
            name: name.to_string(),
            cluster: self.clone(),
        })
    }
}

/// An open RBD image; closed when dropped (a writer's cache is flushed by librbd then).
#[derive(Debug)]
pub(crate) struct Image {
    h: ImageT,
    name: String,
    // Keeps the rados client up until the image is closed (field order: dropped after).
    cluster: Cluster,
}

// SAFETY: librbd image handles may be used from any thread; this one is owned here and
// closed once, in Drop.
unsafe impl Send for Image {}

/// One request of [`Image::run`]: its buffer is borrowed until the request completes.
#[derive(Debug)]
pub(crate) enum Op<'a> {
    Write {
        offset: u64,
        data: &'a [u8],
    },
    /// Neighbouring buffers written as one request (one OSD operation per object).
    WriteV {
        offset: u64,
        parts: Vec<&'a [u8]>,
    },
    Zeroes {
        offset: u64,
        len: u64,
    },
    Read {
        offset: u64,
        buf: &'a mut [u8],
    },
}

/// A submitted request: its completion and what it must return.
struct Pending {
    c: CompletionT,
    call: &'static str,
    offset: u64,
    len: usize,
    /// Reads must return their whole length.
    want_len: bool,
    /// A vectored write's iovec array, kept until the request completed.
    _iov: Vec<nix::libc::iovec>,
}

/// The requests in flight of one [`Image::run`]. Dropping it waits for every one of them, so
/// no buffer is given back to its owner while librbd may still read or fill it, whatever
/// path (error, panic) leaves `run`.
struct Ring<'a> {
    api: &'static Api,
    q: VecDeque<Pending>,
    first_err: Option<Error>,
    image: &'a str,
    _buffers: PhantomData<&'a mut [u8]>,
}

impl Ring<'_> {
    /// Wait for the oldest request and release it; its error is kept if it is the first.
    fn reap_one(&mut self) {
        let Some(p) = self.q.pop_front() else { return };
        // SAFETY: `p.c` is a completion of a submitted request, waited for and released
        // exactly once, here.
        let ret = unsafe {
            (self.api.rbd_aio_wait_for_complete)(p.c);
            let ret = (self.api.rbd_aio_get_return_value)(p.c);
            (self.api.rbd_aio_release)(p.c);
            ret
        };
        if self.first_err.is_some() {
            return;
        }
        let what = format!("{} at {} (+{})", self.image, p.offset, p.len);
        if ret < 0 {
            self.first_err = Some(ceph_err(p.call, &what, ret as i64));
        } else if p.want_len && ret as usize != p.len {
            self.first_err = Some(Error::Tool(format!(
                "{}: {what}: {ret} bytes read of {}: the image ends early",
                p.call, p.len
            )));
        }
    }
}

impl Drop for Ring<'_> {
    fn drop(&mut self) {
        while !self.q.is_empty() {
            self.reap_one();
        }
    }
}

/// Up to `depth` requests in flight: submitted in order, reaped oldest first (they are of
/// similar sizes, so the oldest is usually the first done). The bookkeeping without librbd,
/// so that it can be tested: `submit(op)` starts one, `reap()` waits for the oldest.
pub(crate) fn in_flight<T>(
    ops: impl IntoIterator<Item = T>,
    depth: usize,
    mut submit: impl FnMut(T) -> Result<()>,
    mut pending: impl FnMut() -> usize,
    mut reap: impl FnMut() -> Result<()>,
) -> Result<()> {
    let depth = depth.max(1);
    for op in ops {
        while pending() >= depth {
            reap()?;
        }
        submit(op)?;
    }
    while pending() > 0 {
        reap()?;
    }
    Ok(())
}

impl Image {
    fn api(&self) -> &'static Api {
        self.cluster.0.api
    }

    /// The image's size in bytes.
    pub fn size(&self) -> Result<u64> {
        let mut s = 0u64;
        // SAFETY: an open image and a valid out pointer.
        let r = unsafe { (self.api().rbd_get_size)(self.h, &mut s) };
        check("rbd_get_size", &self.name, r)?;
        Ok(s)
    }

    /// The prefix of the image's data objects (`rbd_data.<image id>`): unique to this image,
    /// so an image removed and another made under its name has another one.
    pub fn block_name_prefix(&self) -> Result<String> {
        let mut prefix = [0u8; 128];
        // SAFETY: an open image and the buffer's true length.
        let r = unsafe {
            (self.api().rbd_get_block_name_prefix)(self.h, prefix.as_mut_ptr().cast(), prefix.len())
        };
        check("rbd_get_block_name_prefix", &self.name, r)?;
        let end = prefix.iter().position(|&b| b == 0).unwrap_or(prefix.len());
        Ok(String::from_utf8_lossy(&prefix[..end]).into_owned())
    }

    /// Grows or shrinks the image to `size` bytes (what is past a shrunk end is gone).
    pub fn resize(&self, size: u64) -> Result<()> {
        // SAFETY: an open image.
        let r = unsafe { (self.api().rbd_resize)(self.h, size) };
        check("rbd_resize", &self.name, r)
    }

    /// The clients watching the image (`rbd status`): every client that has it open for
    /// writing (a running VM, another ingest) watches it, as its address (`IP:PORT/NONCE`).
    /// A client killed a moment ago stays listed until the OSDs time its watch out (~30 s).
    pub fn watchers(&self) -> Result<Vec<String>> {
        let mut room = 8usize;
        loop {
            let mut list: Vec<Watcher> = (0..room)
                .map(|_| Watcher {
                    addr: std::ptr::null_mut(),
                    id: 0,
                    cookie: 0,
                })
                .collect();
            let mut n = room;
            // SAFETY: an open image, `list` holds `n` entries and `n` is a valid in/out pointer.
            let r = unsafe { (self.api().rbd_watchers_list)(self.h, list.as_mut_ptr(), &mut n) };
            if r == -(nix::errno::Errno::ERANGE as c_int) && n > room {
                room = n;
                continue;
            }
            check("rbd_watchers_list", &self.name, r)?;
            let addrs = list[..n.min(room)]
                .iter()
                .map(|w| {
                    if w.addr.is_null() {
                        format!("client.{}", w.id)
                    } else {
                        // SAFETY: librbd filled a NUL-terminated string, freed below.
                        let a = unsafe { std::ffi::CStr::from_ptr(w.addr) };
                        a.to_string_lossy().into_owned()
                    }
                })
                .collect();
            // SAFETY: the list librbd filled, with the count it returned.
            unsafe { (self.api().rbd_watchers_list_cleanup)(list.as_mut_ptr(), n.min(room)) };
            return Ok(addrs);
        }
    }

    /// The object size (the stripe unit of an image that is not striped).
    pub fn object_size(&self) -> Result<u64> {
        let mut s = 0u64;
        // SAFETY: an open image and a valid out pointer.
        let r = unsafe { (self.api().rbd_get_stripe_unit)(self.h, &mut s) };
        check("rbd_get_stripe_unit", &self.name, r)?;
        Ok(s)
    }

    /// Make every completed write durable (and flush a writer's cache).
    pub fn flush(&self) -> Result<()> {
        // SAFETY: an open image.
        let r = unsafe { (self.api().rbd_flush)(self.h) };
        check("rbd_flush", &self.name, r)
    }

    /// Run `ops` with up to `depth` of them in flight; returns when all completed. The first
    /// failure is returned once every request submitted before it completed.
    pub fn run<'a>(&self, ops: impl IntoIterator<Item = Op<'a>>, depth: usize) -> Result<()> {
        let api = self.api();
        let ring = std::cell::RefCell::new(Ring {
            api,
            q: VecDeque::new(),
            first_err: None,
            image: &self.name,
            _buffers: PhantomData,
        });
        let h = self.h;
        let submit = |op: Op<'a>| -> Result<()> {
            let mut c: CompletionT = std::ptr::null_mut();
            // SAFETY: a valid out pointer; no callback (the ring waits for each completion).
            let r = unsafe { (api.rbd_aio_create_completion)(std::ptr::null_mut(), None, &mut c) };
            check("rbd_aio_create_completion", &self.name, r)?;
            let mut iov: Vec<nix::libc::iovec> = Vec::new();
            let (call, offset, len, want_len, r) = match op {
                Op::Write { offset, data } => {
                    // SAFETY: an open image and a fresh completion; `data` is borrowed for
                    // `'a`, and `ring`, which waits for this request before it goes, does not
                    // outlive this call, so the buffer outlives the request.
                    ("rbd_aio_write2", offset, data.len(), false, unsafe {
                        (api.rbd_aio_write2)(h, offset, data.len(), data.as_ptr().cast(), c, 0)
                    })
                }
                Op::WriteV { offset, parts } => {
                    iov = parts
                        .iter()
                        .map(|p| nix::libc::iovec {
                            iov_base: p.as_ptr() as *mut c_void,
                            iov_len: p.len(),
                        })
                        .collect();
                    let len = parts.iter().map(|p| p.len()).sum();
                    let n = c_int::try_from(iov.len()).unwrap_or(c_int::MAX);
                    // SAFETY: as for a write, for every part; librbd only reads through the
                    // iovecs (the `*mut` is the C type's), and the iovec array moves into the
                    // ring's `Pending` (its heap buffer stays put) until the request completed.
                    ("rbd_aio_writev", offset, len, false, unsafe {
                        (api.rbd_aio_writev)(h, iov.as_ptr(), n, offset, c)
                    })
                }
                Op::Zeroes { offset, len } => {
                    let n = usize::try_from(len).map_err(|_| {
                        Error::Usage(format!("a zero range of {len} bytes is too long"))
                    });
                    let n = match n {
                        Ok(n) => n,
                        Err(e) => {
                            // SAFETY: the fresh completion, never submitted, released once.
                            unsafe { (api.rbd_aio_release)(c) };
                            return Err(e);
                        }
                    };
                    // 0 zero flags: thin (whole objects are removed, not written with zeros).
                    // SAFETY: an open image and a fresh completion; no buffer.
                    ("rbd_aio_write_zeroes", offset, n, false, unsafe {
                        (api.rbd_aio_write_zeroes)(h, offset, n, c, 0, 0)
                    })
                }
                Op::Read { offset, buf } => {
                    // SAFETY: as for a write; `buf` is borrowed mutably for `'a`, so nothing
                    // else reads or writes it while librbd fills it.
                    ("rbd_aio_read2", offset, buf.len(), true, unsafe {
                        (api.rbd_aio_read2)(h, offset, buf.len(), buf.as_mut_ptr().cast(), c, 0)
                    })
                }
            };
            if r < 0 {
                // SAFETY: the request was refused, so the completion was never handed to
                // librbd's I/O path: release it once, here.
                unsafe { (api.rbd_aio_release)(c) };
                return Err(ceph_err(
                    call,
                    &format!("{} at {offset}", self.name),
                    r.into(),
                ));
            }
            ring.borrow_mut().q.push_back(Pending {
                c,
                call,
                offset,
                len,
                want_len,
                _iov: iov,
            });
            Ok(())
        };
        let reap = || -> Result<()> {
            let mut r = ring.borrow_mut();
            r.reap_one();
            match r.first_err.take() {
                Some(e) => Err(e),
                None => Ok(()),
            }
        };
        let result = in_flight(ops, depth, submit, || ring.borrow().q.len(), reap);
        // Every request (also those after a failure) is waited for before the buffers go back.
        let mut ring = ring.into_inner();
        while !ring.q.is_empty() {
            ring.reap_one();
        }
        result?;
        match ring.first_err.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Whether `[offset, offset+len)` is known to hold no data (no object of it exists), from
    /// the object map; `false` when unknown (no `fast-diff` feature, or the map is invalid).
    /// As qemu's rbd driver answers block-status queries.
    pub fn reads_as_zeros(&self, offset: u64, len: u64) -> bool {
        let api = self.api();
        let (mut features, mut flags) = (0u64, 0u64);
        // SAFETY: an open image and valid out pointers.
        let known = unsafe {
            (api.rbd_get_features)(self.h, &mut features) == 0
                && (api.rbd_get_flags)(self.h, &mut flags) == 0
        };
        if !known || features & FEATURE_FAST_DIFF == 0 || flags & FLAG_FAST_DIFF_INVALID != 0 {
            return false;
        }
        extern "C" fn saw(_off: u64, _len: usize, exists: c_int, arg: *mut c_void) -> c_int {
            if exists != 0 {
                // SAFETY: `arg` is the `&mut bool` passed below, alive for the walk.
                unsafe { *arg.cast::<bool>() = true };
                return STOP_WALK;
            }
            0
        }
        let mut data = false;
        // SAFETY: an open image; a null snapshot (from the beginning); include the parent,
        // whole objects (the object map); the callback gets `&mut data`, which outlives the
        // synchronous walk.
        let r = unsafe {
            (api.rbd_diff_iterate2)(
                self.h,
                std::ptr::null(),
                offset,
                len,
                1,
                1,
                Some(saw),
                (&mut data as *mut bool).cast(),
            )
        };
        (r == 0 || r == STOP_WALK) && !data
    }

    /// Where the image's data objects are, when they can be digested on the OSDs: `None` for
    /// any layout but the plain one (fancy striping, a parent image whose objects it reads
    /// through, a separate data pool, an old format 1 image), whose read-back reads the bytes.
    pub fn object_layout(&self) -> Option<ObjectLayout> {
        let api = self.api();
        let (mut count, mut overlap, mut prefix) = (0u64, 0u64, [0u8; 128]);
        let object_size = self.object_size().ok()?;
        // SAFETY: an open image, valid out pointers and the prefix buffer's true length.
        let (striped, parent, data_pool, named, pool) = unsafe {
            (
                (api.rbd_get_stripe_count)(self.h, &mut count) != 0 || count != 1,
                (api.rbd_get_overlap)(self.h, &mut overlap) != 0 || overlap != 0,
                (api.rbd_get_data_pool_id)(self.h),
                (api.rbd_get_block_name_prefix)(self.h, prefix.as_mut_ptr().cast(), prefix.len()),
                (api.rados_ioctx_get_id)(self.cluster.0.io),
            )
        };
        if striped || parent || data_pool != pool || named != 0 || object_size == 0 {
            return None;
        }
        let end = prefix.iter().position(|&b| b == 0)?;
        let prefix = std::str::from_utf8(&prefix[..end]).ok()?.to_string();
        prefix.starts_with("rbd_data.").then_some(ObjectLayout {
            prefix,
            object_size,
        })
    }

    /// Has the OSDs compute the XXH64 of each of `digests`' ranges (each within one object of
    /// `layout`) over what they store, with up to `depth` requests in flight: the read-back
    /// without the bytes crossing the network (each request is one stat and one checksum
    /// operation on the object). Fills in `stored`.
    pub fn stored_digests(
        &self,
        layout: &ObjectLayout,
        digests: &mut [StoredDigest],
        depth: usize,
    ) -> Result<()> {
        let api = self.api();
        let io = self.cluster.0.io;
        let name = &self.name;
        let mut ring = DigestRing {
            api,
            q: VecDeque::new(),
        };
        let ranges: Vec<(u64, u64)> = digests.iter().map(|d| (d.offset, d.len)).collect();
        let mut first_err: Option<Error> = None;
        let mut finish = |slot: Box<DigestSlot>, ret: c_int, first_err: &mut Option<Error>| match (
            slot.digest(name, ret),
            digests.get_mut(slot.index),
        ) {
            (Ok(stored), Some(d)) => d.stored = stored,
            (Err(e), _) if first_err.is_none() => *first_err = Some(e),
            _ => {}
        };
        let depth = depth.max(1);
        for (i, &(offset, dlen)) in ranges.iter().enumerate() {
            while ring.q.len() >= depth {
                if let Some((slot, ret)) = ring.reap_one() {
                    finish(slot, ret, &mut first_err);
                }
            }
            if first_err.is_some() {
                break;
            }
            let (object, within) = (offset / layout.object_size, offset % layout.object_size);
            let len = usize::try_from(dlen).unwrap_or(usize::MAX);
            if within + dlen > layout.object_size {
                first_err = Some(Error::Usage(format!(
                    "{name}: digest range at {offset} (+{dlen}) crosses an object boundary"
                )));
                break;
            }
            let mut slot = Box::new(DigestSlot {
                index: i,
                oid: cstring("object", &format!("{}.{object:016x}", layout.prefix))?,
                within,
                len: dlen,
                op: std::ptr::null_mut(),
                c: std::ptr::null_mut(),
                size: 0,
                mtime: 0,
                stat_rval: 0,
                sum_rval: 0,
                out: [0; 16],
            });
            let seed = [0u8; 8];
            // SAFETY: the read op is created here and released once (after its request
            // completed, or below if it was refused); every out pointer points into the boxed
            // slot, which the ring keeps (and waits for) until the request completed; the seed
            // is copied by librados when the operation is set up.
            let r = unsafe {
                slot.op = (api.rados_create_read_op)();
                (api.rados_read_op_stat)(
                    slot.op,
                    &mut slot.size,
                    &mut slot.mtime,
                    &mut slot.stat_rval,
                );
                (api.rados_read_op_checksum)(
                    slot.op,
                    CHECKSUM_XXHASH64,
                    seed.as_ptr().cast(),
                    seed.len(),
                    within,
                    len,
                    0,
                    slot.out.as_mut_ptr().cast(),
                    slot.out.len(),
                    &mut slot.sum_rval,
                );
                let r = (api.rados_aio_create_completion2)(std::ptr::null_mut(), None, &mut slot.c);
                if r < 0 {
                    r
                } else {
                    (api.rados_aio_read_op_operate)(slot.op, io, slot.c, slot.oid.as_ptr(), 0)
                }
            };
            if r < 0 {
                // SAFETY: the request was never submitted: release what was created, once.
                unsafe {
                    if !slot.c.is_null() {
                        (api.rados_aio_release)(slot.c);
                    }
                    (api.rados_release_read_op)(slot.op);
                }
                first_err = Some(ceph_err(
                    "rados_aio_read_op_operate",
                    &format!("{name}: object {:?}", slot.oid),
                    r.into(),
                ));
                break;
            }
            ring.q.push_back(slot);
        }
        while let Some((slot, ret)) = ring.reap_one() {
            finish(slot, ret, &mut first_err);
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Close the image, reporting librbd's error (a failed final flush).
    pub fn close(mut self) -> Result<()> {
        let h = std::mem::replace(&mut self.h, std::ptr::null_mut());
        // SAFETY: the open handle, closed once (Drop skips the null left behind).
        let r = unsafe { (self.api().rbd_close)(h) };
        check("rbd_close", &self.name, r)
    }
}

impl DigestSlot {
    /// What the completed request says is stored in the slot's range (see [`StoredDigest`]).
    fn digest(&self, image: &str, ret: c_int) -> Result<Option<(u64, u64)>> {
        let what = || format!("{image}: object {:?}", self.oid);
        if ret == -(nix::errno::Errno::ENOENT as c_int) {
            return Ok(None);
        }
        if ret < 0 {
            return Err(ceph_err("rados_aio_read_op_operate", &what(), ret.into()));
        }
        if self.stat_rval < 0 {
            return Err(ceph_err(
                "rados_read_op_stat",
                &what(),
                self.stat_rval.into(),
            ));
        }
        // The OSD checksums the range up to the object's end; past it the image reads zeros.
        let n = self.len.min(self.size.saturating_sub(self.within));
        if n == 0 {
            return Ok(Some((0, DigestHasher::new().finish())));
        }
        if self.sum_rval < 0 {
            return Err(ceph_err(
                "rados_read_op_checksum",
                &what(),
                self.sum_rval.into(),
            ));
        }
        let (mut count, mut sum) = ([0u8; 4], [0u8; 8]);
        count.copy_from_slice(&self.out[..4]);
        sum.copy_from_slice(&self.out[4..12]);
        match u32::from_le_bytes(count) {
            1 => Ok(Some((n, u64::from_le_bytes(sum)))),
            k => Err(Error::Tool(format!(
                "rados_read_op_checksum: {}: the OSD gave {k} checksums, not one",
                what()
            ))),
        }
    }
}

/// The stat + checksum requests of one [`Image::stored_digests`] in flight. Dropping it waits
/// for every one, so no slot is freed while librados may still fill it.
struct DigestRing {
    api: &'static Api,
    q: VecDeque<Box<DigestSlot>>,
}

impl DigestRing {
    /// Wait for the oldest request; its slot and return value.
    fn reap_one(&mut self) -> Option<(Box<DigestSlot>, c_int)> {
        let slot = self.q.pop_front()?;
        // SAFETY: a submitted request's completion and read op, waited for and released
        // exactly once, here.
        let ret = unsafe {
            (self.api.rados_aio_wait_for_complete)(slot.c);
            let ret = (self.api.rados_aio_get_return_value)(slot.c);
            (self.api.rados_aio_release)(slot.c);
            (self.api.rados_release_read_op)(slot.op);
            ret
        };
        Some((slot, ret))
    }
}

impl Drop for DigestRing {
    fn drop(&mut self) {
        while self.reap_one().is_some() {}
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        if !self.h.is_null() {
            // SAFETY: the open handle, closed once, here (`close` leaves a null).
            unsafe {
                (self.api().rbd_close)(self.h);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ceph.conf that is not there is named before librados runs (it printed its own
    /// "unable to get monitor info from DNS SRV" and advised setting CEPH_CONF, which was set).
    #[test]
    fn a_missing_ceph_conf_is_named_before_librados_runs() {
        let e = Cluster::connect(&Connect {
            conf: Some("/nonexistent/mgear-test/ceph.conf".into()),
            user: None,
            pool: "volumes".into(),
            options: Vec::new(),
            what: "rbd:volumes/x".into(),
        })
        .unwrap_err();
        assert!(e.is_usage(), "{e}");
        let e = e.to_string();
        assert!(
            e.contains("/nonexistent/mgear-test/ceph.conf, does not exist")
                && e.contains("CEPH_CONF"),
            "{e}"
        );
    }

    #[test]
    fn errors_say_what_is_wrong_and_what_to_do() {
        let e = explain("rbd_open", -2);
        assert!(
            e.contains("image not found") && e.contains("-ENOENT"),
            "{e}"
        );
        assert!(explain("rados_ioctx_create", -2).contains("pool not found"));
        assert!(explain("rados_conf_read_file", -2).contains("CEPH_CONF"));
        assert!(explain("rados_connect", -110).contains("no monitor answered within 30 s"));
        // Settings the operator fixes are usage errors (exit 2), a failing cluster is not.
        assert!(ceph_err("rados_ioctx_create", "p", -2).is_usage());
        assert!(ceph_err("rbd_aio_write2", "p", -1).is_usage());
        assert!(!ceph_err("rbd_aio_write2", "p", -5).is_usage());
        assert!(!ceph_err("rbd_open", "p", -2).is_usage());
        // An OSD op that timed out is not told as a monitor that did not answer in 30 s.
        let e = explain("rbd_create4", -110);
        assert!(
            e.contains("within 300 s") && e.contains("OSD is down"),
            "{e}"
        );
        assert!(explain("rados_connect", -13).contains("keyring"));
        assert!(explain("rbd_aio_write2", -28).contains("full"));
        assert!(explain("rbd_aio_write2", -108).contains("blocklisted"));
        // An errno without a special meaning still names itself.
        let e = explain("rbd_aio_read2", -5);
        assert!(e.contains("-EIO"), "{e}");
        let err = ceph_err("rbd_open", "volumes/web01", -2);
        let text = err.to_string();
        assert!(
            text.contains("rbd_open")
                && text.contains("volumes/web01")
                && text.contains("not found"),
            "{text}"
        );
        assert!(matches!(err, Error::Ceph { errno: -2, .. }));
    }

    /// The ring never has more than `depth` requests out, submits in order, waits for every
    /// request it started, and stops submitting at the first failure.
    #[test]
    fn in_flight_keeps_the_depth_and_drains() {
        use std::cell::RefCell;
        for depth in [1, 3, 8] {
            let out = RefCell::new(VecDeque::new());
            let (max, submitted, reaped) =
                (RefCell::new(0), RefCell::new(vec![]), RefCell::new(vec![]));
            in_flight(
                0..10u32,
                depth,
                |i| {
                    out.borrow_mut().push_back(i);
                    submitted.borrow_mut().push(i);
                    let n = out.borrow().len();
                    let mut m = max.borrow_mut();
                    *m = (*m).max(n);
                    Ok(())
                },
                || out.borrow().len(),
                || {
                    reaped
                        .borrow_mut()
                        .push(out.borrow_mut().pop_front().unwrap());
                    Ok(())
                },
            )
            .unwrap();
            assert_eq!(*max.borrow(), depth.min(10), "depth {depth}");
            assert_eq!(*submitted.borrow(), (0..10).collect::<Vec<_>>());
            assert_eq!(*reaped.borrow(), (0..10).collect::<Vec<_>>());
        }
        // The third reap fails: no request is submitted after it.
        let out = RefCell::new(VecDeque::new());
        let reaps = RefCell::new(0);
        let e = in_flight(
            0..10u32,
            2,
            |i| {
                out.borrow_mut().push_back(i);
                Ok(())
            },
            || out.borrow().len(),
            || {
                *reaps.borrow_mut() += 1;
                let i = out.borrow_mut().pop_front().unwrap();
                if *reaps.borrow() == 3 {
                    Err(Error::Tool(format!("request {i} failed")))
                } else {
                    Ok(())
                }
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("request 2 failed"), "{e}");
        assert_eq!(
            out.borrow().len(),
            1,
            "one request left for the caller to drain"
        );
    }

    /// The OSD's reply to a stat + checksum request, as the read-back uses it: a missing
    /// object and a range past the object's end hold nothing; a range the object ends in is
    /// hashed up to its end; failures and odd replies are errors.
    #[test]
    fn digest_replies_are_read_as_the_osd_gives_them() {
        let slot = |size: u64, within: u64, out: [u8; 16], sum_rval: c_int| DigestSlot {
            index: 0,
            oid: CString::new("rbd_data.1.0000000000000000").unwrap(),
            within,
            len: 10,
            op: std::ptr::null_mut(),
            c: std::ptr::null_mut(),
            size,
            mtime: 0,
            stat_rval: 0,
            sum_rval,
            out,
        };
        let mut one = [0u8; 16];
        one[..4].copy_from_slice(&1u32.to_le_bytes());
        one[4..12].copy_from_slice(&0x1234_5678_9abc_def0u64.to_le_bytes());
        let empty = DigestHasher::new().finish();
        assert_eq!(slot(0, 0, [0; 16], 0).digest("img", -2).unwrap(), None);
        assert_eq!(
            slot(100, 200, [0; 16], 0).digest("img", 0).unwrap(),
            Some((0, empty))
        );
        assert_eq!(
            slot(105, 100, one, 0).digest("img", 0).unwrap(),
            Some((5, 0x1234_5678_9abc_def0))
        );
        assert_eq!(
            slot(4096, 100, one, 0).digest("img", 0).unwrap(),
            Some((10, 0x1234_5678_9abc_def0))
        );
        assert!(slot(4096, 0, one, -22).digest("img", 0).is_err());
        assert!(
            slot(4096, 0, [0; 16], 0).digest("img", 0).is_err(),
            "no checksum given"
        );
        let e = slot(4096, 0, one, 0)
            .digest("img", -5)
            .unwrap_err()
            .to_string();
        assert!(e.contains("rbd_data.1.0000000000000000"), "{e}");
    }

    #[test]
    fn a_missing_library_names_the_package() {
        let e = load("librados-not-here.so.2", "librbd-not-here.so.1")
            .map(|_| ())
            .unwrap_err();
        assert!(
            e.contains("librados-not-here.so.2") && e.contains("apt-get install librbd1"),
            "{e}"
        );
    }
}
