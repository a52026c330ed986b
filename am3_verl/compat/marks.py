"""The attribute every function or class installed into verl by :mod:`am3_verl.compat` carries."""

MARK = "_am3_compat"
"""Set on everything :mod:`am3_verl.compat` installs, so re-applying a reach is a no-op."""
