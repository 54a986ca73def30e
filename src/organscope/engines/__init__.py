"""Segmentation engines behind one interface (`base.Engine`), built by name in `registry` (get_engine).
Each engine is a leaf over the shared core (volume, grid, components, model cards, organs): none imports another."""
