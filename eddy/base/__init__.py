"""The bottom layer: what every eddy process needs and that knows nothing of caches or CSI.

errors (eddy's exception classes and their gRPC codes), log (structured logging), rpc (the one
wrapper every servicer method goes through), mounttable (mount(2), umount2(2) and
/proc/self/mountinfo), sockets (unix socket endpoints) and pb (code generated from proto/ by
`make proto`). Nothing here imports cache_engine, csi or the CLI; import-linter checks it.
"""
