pub mod xts;
