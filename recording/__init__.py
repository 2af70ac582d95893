"""Recording gradient snapshots from training code: writes runs that `gradcheck inspect` reads."""
