"""The node's mounter: it mounts each staged volume's FUSE connection and keeps its daemon.

`mounter.Mounter` mounts, starts, supervises, resumes and stops the per-volume mount daemons
and holds a copy of each connection's /dev/fuse descriptor; `records` keeps what it must know
after its own restart; `service` serves it on a unix socket (`eddy mounter`) and gives the
node plugin a client with the same methods, which holds the second copy of each descriptor;
`wire` frames the messages, with descriptors passed by SCM_RIGHTS.
"""
