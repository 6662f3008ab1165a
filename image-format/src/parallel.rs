//! Runs one function over a slice on a few scoped threads and gives the
//! results back in the slice's order: how the writer seals records, the
//! reader authenticates them, and ingest checks what it wrote, on every core.

use crate::error::{Error, Result};

/// `f` of every item, in `items`' order, computed on up to `threads`
/// scoped threads (each takes one contiguous run of items). With one thread
/// or one item it runs on the caller's thread. A panicking thread is an
/// error, not a panic of the caller.
pub fn map_in_order<T: Sync, R: Send>(
    items: &[T],
    threads: usize,
    f: impl Fn(&T) -> R + Sync,
) -> Result<Vec<R>> {
    let threads = threads.clamp(1, items.len().max(1));
    if threads == 1 {
        return Ok(items.iter().map(f).collect());
    }
    let per = items.len().div_ceil(threads);
    let f = &f;
    std::thread::scope(|scope| {
        let handles: Vec<_> = items
            .chunks(per)
            .map(|part| scope.spawn(move || part.iter().map(f).collect::<Vec<R>>()))
            .collect();
        let mut out = Vec::with_capacity(items.len());
        for h in handles {
            out.extend(
                h.join()
                    .map_err(|_| Error::Backend("a worker thread panicked".into()))?,
            );
        }
        Ok(out)
    })
}

/// [`map_in_order`] for items `f` takes by value (say, a buffer it then
/// decrypts in place and returns).
pub fn map_owned_in_order<T: Send, R: Send>(
    items: Vec<T>,
    threads: usize,
    f: impl Fn(T) -> R + Sync,
) -> Result<Vec<R>> {
    let threads = threads.clamp(1, items.len().max(1));
    if threads == 1 {
        return Ok(items.into_iter().map(f).collect());
    }
    let per = items.len().div_ceil(threads);
    let mut parts: Vec<Vec<T>> = Vec::with_capacity(threads);
    let mut rest = items.into_iter();
    loop {
        let part: Vec<T> = rest.by_ref().take(per).collect();
        if part.is_empty() {
            break;
        }
        parts.push(part);
    }
    let f = &f;
    std::thread::scope(|scope| {
        let handles: Vec<_> = parts
            .into_iter()
            .map(|part| scope.spawn(move || part.into_iter().map(f).collect::<Vec<R>>()))
            .collect();
        let mut out = Vec::new();
        for h in handles {
            out.extend(
                h.join()
                    .map_err(|_| Error::Backend("a worker thread panicked".into()))?,
            );
        }
        Ok(out)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_come_back_in_order_whatever_the_threads() {
        let items: Vec<u32> = (0..37).collect();
        for threads in [0, 1, 2, 3, 8, 100] {
            let got = map_in_order(&items, threads, |x| x * 2).unwrap();
            assert_eq!(got, items.iter().map(|x| x * 2).collect::<Vec<_>>());
        }
        assert!(map_in_order(&[] as &[u32], 4, |x| *x).unwrap().is_empty());
        for threads in [0, 1, 2, 3, 8, 100] {
            let got = map_owned_in_order(items.clone(), threads, |x| x * 2).unwrap();
            assert_eq!(got, items.iter().map(|x| x * 2).collect::<Vec<_>>());
        }
        assert!(map_owned_in_order(Vec::<u32>::new(), 4, |x| x)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn a_panicking_thread_is_an_error() {
        let items = [1, 2, 3, 4];
        let r = map_in_order(&items, 2, |&x| {
            assert!(x != 4, "boom");
            x
        });
        assert!(matches!(r, Err(Error::Backend(_))));
    }
}
