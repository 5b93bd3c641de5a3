"""Provenance (PRODUCT.md §13): the marks a result file carries, read on save and by
`verify`, and the hand-off to editors (`export`), which adds the team's own.

Modules: marks (read a file's C2PA manifests, XMP and other AI labels), xmp (XMP packets
read and written), sign (the team's C2PA signature), export (the hand-off), certs
(throwaway certificates for the sandbox and the tests).
"""
