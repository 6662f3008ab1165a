//! Board definition and hardware trait implementations.
#![cfg_attr(not(feature = "sim"), no_std)]
