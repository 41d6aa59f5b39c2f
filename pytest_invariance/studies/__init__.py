"""The paper's protocols and reference models (import the submodules explicitly; this stays import-free)."""
