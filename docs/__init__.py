"""The user documentation, shipped in the package so `gradcheck help TOPIC` works from an installed wheel."""
