"""MetalLB configuration -> an lbd configuration document (``lbd import metallb``); pure.

``convert`` walks the resources and renders the result, ``model`` holds the resource and
conversion types, ``load`` reads YAML, ``resources`` converts each MetalLB kind and ``legacy``
turns the pre-0.13 ConfigMap into the CRs MetalLB's own converter makes.
"""
