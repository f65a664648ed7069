"""Shared helpers for the Modern CNNs notebooks.

Modules: ``config`` (profile, device, seeding), ``data`` (Fashion-MNIST on the
training device), ``train`` (``fit`` and ``History``), ``plot``, ``profile``
(parameters, FLOPs, layer tables, throughput) and ``models`` (generated from the
notebooks' ``# @save`` cells by ``python -m utils.export``).
"""
