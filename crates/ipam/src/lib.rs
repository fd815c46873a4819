//! Pure IP allocation logic.
