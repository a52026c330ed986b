"""Importing this module activates am3-verl's base-model support (:func:`am3_verl.models.register`).

The am3-verl plugin entry point does this in every process that imports verl. This module is for
setups that load am3-verl only through ``VERL_USE_EXTERNAL_MODULES=am3_verl.models.enable`` (verl
imports it at ``import verl`` and, unlike plugin entry points, reports its errors loudly).
"""

from am3_verl.models import register

register()
