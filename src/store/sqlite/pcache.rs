//! SQLite's own page cache, with a cheaper end of transaction.
//!
//! At the end of every transaction SQLite asks its page cache to drop the
//! pages numbered past the end of the database (`xTruncate`). The default
//! cache (`pcache1`) keeps the largest page number it has held (`iMaxKey`).
//! When few pages lie between the limit and that number, it looks only at
//! their hash slots; otherwise it walks every page it holds.
//!
//! A B-tree split that puts its new pages back in file order swaps their
//! numbers through a temporary one, the page of the lock byte (262,145 with
//! 4 KiB pages). Until the next truncation, `iMaxKey` is then far past the
//! end of any database under 1 GiB. So the writer, whose transactions split
//! pages all the time, walked its whole cache at the end of nearly every
//! transaction, though nothing lay past the end. A larger cache made each
//! walk longer.
//!
//! This wrapper forwards every call to the default cache. It also keeps its
//! own bound on the page numbers a cache can hold, one that moves back when a
//! page leaves the temporary number. When that bound shows that no page lies
//! past the limit, it skips the truncation; there is nothing to drop then.
//!
//! [`install`] must run before SQLite is initialized, that is, before the
//! process opens its first connection, on one thread. The binaries call it
//! first thing in `main`. Where it runs too late it changes nothing, and
//! SQLite's own cache is used as it is.

use rusqlite::ffi;
use std::os::raw::{c_int, c_uint, c_void};
use std::ptr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// Bounds the page numbers a cache may hold.
///
/// Pages enter a cache only when they are fetched or renumbered. The bound
/// may be larger than needed (the cache also evicts pages on its own, and
/// nobody is told), but it is never smaller: a truncation that it skips would
/// have found nothing to drop.
#[derive(Debug, Default)]
struct Bound {
    /// The largest number fetched since the last truncation below it.
    fetched: c_uint,
    /// Numbers above `fetched` that a page was moved to and not yet moved
    /// from: during a split, the temporary one, a few instructions long.
    moved: Vec<c_uint>,
}

impl Bound {
    fn fetched(&mut self, key: c_uint) {
        self.fetched = self.fetched.max(key);
    }

    fn rekeyed(&mut self, old: c_uint, new: c_uint) {
        self.moved.retain(|&k| k != old);
        if new > self.fetched {
            self.moved.push(new);
        }
    }

    /// Whether a page numbered `limit` or above may be in the cache.
    fn may_hold_from(&self, limit: c_uint) -> bool {
        self.fetched >= limit || self.moved.iter().any(|&k| k >= limit)
    }

    /// The cache dropped every page numbered `limit` or above.
    fn truncated(&mut self, limit: c_uint) {
        self.fetched = self.fetched.min(limit.saturating_sub(1));
        self.moved.retain(|&k| k < limit);
    }
}

/// One cache: the default one, and its bound.
struct Cache {
    inner: *mut ffi::sqlite3_pcache,
    bound: Bound,
}

type Fetch =
    unsafe extern "C" fn(*mut ffi::sqlite3_pcache, c_uint, c_int) -> *mut ffi::sqlite3_pcache_page;
type Unpin = unsafe extern "C" fn(*mut ffi::sqlite3_pcache, *mut ffi::sqlite3_pcache_page, c_int);
type Rekey =
    unsafe extern "C" fn(*mut ffi::sqlite3_pcache, *mut ffi::sqlite3_pcache_page, c_uint, c_uint);

/// The default cache's methods.
struct Base {
    arg: *mut c_void,
    init: unsafe extern "C" fn(*mut c_void) -> c_int,
    shutdown: Option<unsafe extern "C" fn(*mut c_void)>,
    create: unsafe extern "C" fn(c_int, c_int, c_int) -> *mut ffi::sqlite3_pcache,
    cachesize: unsafe extern "C" fn(*mut ffi::sqlite3_pcache, c_int),
    pagecount: unsafe extern "C" fn(*mut ffi::sqlite3_pcache) -> c_int,
    fetch: Fetch,
    unpin: Unpin,
    rekey: Rekey,
    truncate: unsafe extern "C" fn(*mut ffi::sqlite3_pcache, c_uint),
    destroy: unsafe extern "C" fn(*mut ffi::sqlite3_pcache),
    shrink: Option<unsafe extern "C" fn(*mut ffi::sqlite3_pcache)>,
}

// SAFETY: `arg` is the default cache's own argument, only ever handed back
// to it; SQLite's default cache is safe to call from any thread.
unsafe impl Send for Base {}
unsafe impl Sync for Base {}

static BASE: OnceLock<Base> = OnceLock::new();
static INSTALLED: OnceLock<bool> = OnceLock::new();
static SKIPPED: AtomicU64 = AtomicU64::new(0);
static PASSED: AtomicU64 = AtomicU64::new(0);

fn base() -> &'static Base {
    // Set before the methods that call this are handed to SQLite.
    BASE.get()
        .expect("page cache wrapper used before it was installed")
}

/// Puts the wrapper in place of SQLite's default page cache. Returns whether
/// it is in place (also when an earlier call put it there).
///
/// Call it before the process opens any SQLite connection, while no other
/// thread uses SQLite: SQLite's configuration is not thread-safe.
pub fn install() -> bool {
    *INSTALLED.get_or_init(|| {
        // SAFETY: called before SQLite is initialized (otherwise
        // `sqlite3_config` refuses with SQLITE_MISUSE and nothing changes);
        // the structure passed is of the type each option expects.
        unsafe {
            let mut m: ffi::sqlite3_pcache_methods2 = std::mem::zeroed();
            if ffi::sqlite3_config(
                ffi::SQLITE_CONFIG_GETPCACHE2,
                &mut m as *mut ffi::sqlite3_pcache_methods2,
            ) != ffi::SQLITE_OK
            {
                return false;
            }
            let (
                Some(init),
                Some(create),
                Some(cachesize),
                Some(pagecount),
                Some(fetch),
                Some(unpin),
                Some(rekey),
                Some(truncate),
                Some(destroy),
            ) = (
                m.xInit,
                m.xCreate,
                m.xCachesize,
                m.xPagecount,
                m.xFetch,
                m.xUnpin,
                m.xRekey,
                m.xTruncate,
                m.xDestroy,
            )
            else {
                return false;
            };
            let base = Base {
                arg: m.pArg,
                init,
                shutdown: m.xShutdown,
                create,
                cachesize,
                pagecount,
                fetch,
                unpin,
                rekey,
                truncate,
                destroy,
                shrink: m.xShrink,
            };
            if BASE.set(base).is_err() {
                return false;
            }
            let ours = ffi::sqlite3_pcache_methods2 {
                iVersion: m.iVersion,
                pArg: ptr::null_mut(),
                xInit: Some(x_init),
                xShutdown: Some(x_shutdown),
                xCreate: Some(x_create),
                xCachesize: Some(x_cachesize),
                xPagecount: Some(x_pagecount),
                xFetch: Some(x_fetch),
                xUnpin: Some(x_unpin),
                xRekey: Some(x_rekey),
                xTruncate: Some(x_truncate),
                xDestroy: Some(x_destroy),
                xShrink: Some(x_shrink),
            };
            // SQLite copies the structure.
            ffi::sqlite3_config(
                ffi::SQLITE_CONFIG_PCACHE2,
                &ours as *const ffi::sqlite3_pcache_methods2,
            ) == ffi::SQLITE_OK
        }
    })
}

/// Whether [`install`] put the wrapper in place.
pub fn installed() -> bool {
    INSTALLED.get().copied().unwrap_or(false)
}

/// Truncations skipped (nothing past the limit) and passed on, so far.
pub fn truncations() -> (u64, u64) {
    (
        SKIPPED.load(Ordering::Relaxed),
        PASSED.load(Ordering::Relaxed),
    )
}

// The methods. SQLite calls those of one cache from one thread at a time (a
// cache belongs to one connection), and `p` is always a pointer made by
// `x_create` and not yet given to `x_destroy`.

unsafe fn cache<'a>(p: *mut ffi::sqlite3_pcache) -> &'a mut Cache {
    &mut *p.cast::<Cache>()
}

unsafe extern "C" fn x_init(_: *mut c_void) -> c_int {
    let b = base();
    (b.init)(b.arg)
}

unsafe extern "C" fn x_shutdown(_: *mut c_void) {
    let b = base();
    if let Some(f) = b.shutdown {
        f(b.arg);
    }
}

unsafe extern "C" fn x_create(
    page_size: c_int,
    extra: c_int,
    purgeable: c_int,
) -> *mut ffi::sqlite3_pcache {
    let inner = (base().create)(page_size, extra, purgeable);
    if inner.is_null() {
        return ptr::null_mut();
    }
    Box::into_raw(Box::new(Cache {
        inner,
        bound: Bound::default(),
    }))
    .cast()
}

unsafe extern "C" fn x_cachesize(p: *mut ffi::sqlite3_pcache, n: c_int) {
    (base().cachesize)(cache(p).inner, n)
}

unsafe extern "C" fn x_pagecount(p: *mut ffi::sqlite3_pcache) -> c_int {
    (base().pagecount)(cache(p).inner)
}

unsafe extern "C" fn x_fetch(
    p: *mut ffi::sqlite3_pcache,
    key: c_uint,
    create: c_int,
) -> *mut ffi::sqlite3_pcache_page {
    let c = cache(p);
    let page = (base().fetch)(c.inner, key, create);
    if !page.is_null() {
        c.bound.fetched(key);
    }
    page
}

unsafe extern "C" fn x_unpin(
    p: *mut ffi::sqlite3_pcache,
    page: *mut ffi::sqlite3_pcache_page,
    discard: c_int,
) {
    (base().unpin)(cache(p).inner, page, discard)
}

unsafe extern "C" fn x_rekey(
    p: *mut ffi::sqlite3_pcache,
    page: *mut ffi::sqlite3_pcache_page,
    old: c_uint,
    new: c_uint,
) {
    let c = cache(p);
    (base().rekey)(c.inner, page, old, new);
    c.bound.rekeyed(old, new);
}

unsafe extern "C" fn x_truncate(p: *mut ffi::sqlite3_pcache, limit: c_uint) {
    let c = cache(p);
    if c.bound.may_hold_from(limit) {
        (base().truncate)(c.inner, limit);
        c.bound.truncated(limit);
        PASSED.fetch_add(1, Ordering::Relaxed);
    } else {
        SKIPPED.fetch_add(1, Ordering::Relaxed);
    }
}

unsafe extern "C" fn x_destroy(p: *mut ffi::sqlite3_pcache) {
    let c = Box::from_raw(p.cast::<Cache>());
    (base().destroy)(c.inner);
}

unsafe extern "C" fn x_shrink(p: *mut ffi::sqlite3_pcache) {
    if let Some(f) = base().shrink {
        f(cache(p).inner);
    }
}

#[cfg(test)]
mod tests {
    use super::Bound;

    #[test]
    fn a_split_through_the_lock_byte_page_leaves_nothing_past_the_end() {
        let mut b = Bound::default();
        for k in [1, 7, 40, 41] {
            b.fetched(k);
        }
        // balance_nonroot swapping pages 41 and 7 through page 262,145.
        b.rekeyed(41, 262_145);
        assert!(b.may_hold_from(42), "a page sits at the temporary number");
        b.rekeyed(7, 41);
        b.rekeyed(262_145, 7);
        assert!(!b.may_hold_from(42));
        assert!(b.may_hold_from(41));
    }

    #[test]
    fn the_bound_never_falls_below_a_page_that_may_be_there() {
        let mut b = Bound::default();
        b.fetched(100);
        // A database that shrank: pages 61..=100 must be dropped.
        assert!(b.may_hold_from(61));
        b.truncated(61);
        assert!(!b.may_hold_from(61));
        assert!(b.may_hold_from(60));
        // A page moved past the end stays until it is moved away or dropped.
        b.rekeyed(10, 500);
        assert!(b.may_hold_from(400));
        b.truncated(400);
        assert!(!b.may_hold_from(400));
        // Moving to a number under the bound adds nothing to track.
        b.rekeyed(20, 30);
        assert!(b.moved.is_empty());
        // Truncating everything.
        b.truncated(0);
        assert!(!b.may_hold_from(1));
    }
}
