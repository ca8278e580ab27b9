//! Typed per-request state: a plugin keeps what it learned in one phase for
//! a later one (the rate limiter its quota for the response headers) without
//! the context naming the plugin's types.
//!
//! A request carries few such values (zero or one today), so a small vector
//! scanned by `TypeId` beats a hash map: empty costs nothing, and a lookup
//! is a comparison or two.

use std::any::{Any, TypeId};

/// A set of values keyed by their type.
#[derive(Default)]
pub struct Extensions {
    items: Vec<Box<dyn Any + Send + Sync>>,
}

impl std::fmt::Debug for Extensions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Extensions")
            .field("len", &self.items.len())
            .finish()
    }
}

impl Extensions {
    pub const fn new() -> Self {
        Extensions { items: Vec::new() }
    }

    fn position<T: Any>(&self) -> Option<usize> {
        self.items
            .iter()
            .position(|item| (**item).type_id() == TypeId::of::<T>())
    }

    /// Stores `value`, returning the previous value of its type.
    pub fn insert<T: Any + Send + Sync>(&mut self, value: T) -> Option<T> {
        let previous = self.remove::<T>();
        self.items.push(Box::new(value));
        previous
    }

    pub fn get<T: Any>(&self) -> Option<&T> {
        self.items
            .iter()
            .find_map(|item| (**item).downcast_ref::<T>())
    }

    pub fn get_mut<T: Any>(&mut self) -> Option<&mut T> {
        self.items
            .iter_mut()
            .find_map(|item| (**item).downcast_mut::<T>())
    }

    /// Takes the value of type `T` out, if there is one.
    pub fn remove<T: Any>(&mut self) -> Option<T> {
        let index = self.position::<T>()?;
        let item = self.items.swap_remove(index);
        item.downcast::<T>().ok().map(|boxed| *boxed)
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_found_by_type() {
        let mut ext = Extensions::new();
        assert!(ext.get::<u32>().is_none());
        assert_eq!(ext.insert(7u32), None);
        assert_eq!(ext.insert("a"), None);
        assert_eq!(ext.insert(8u32), Some(7));
        assert_eq!(ext.get::<u32>(), Some(&8));
        *ext.get_mut::<&str>().expect("present") = "b";
        assert_eq!(ext.remove::<&str>(), Some("b"));
        assert_eq!(ext.remove::<&str>(), None);
        assert!(!ext.is_empty());
    }
}
