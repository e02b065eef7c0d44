"""Self-test of the FastMedSAM module: one set of test bodies for pytest (slicer-core) and for Slicer itself."""
