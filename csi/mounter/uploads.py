"""What a writable s3:// volume staged and S3 has not taken yet, at unstage.

A mount daemon stages what its pods write to S3 in the volume's uploads directory
(csi/fuse/sources.py) and retries what S3 refused. When the volume is unstaged, the mounter
uploads what is left; while S3 still refuses it, the unstage fails naming it, and the volume,
its staged files and its records stay (kubelet retries the unstage).
"""

from __future__ import annotations

import os

from cache_engine.spec import parse_parameters, parse_secrets


def drain_uploads(parameters: dict[str, str], secrets: dict[str, str], uploads: str) -> None:
    """Before a writable volume goes away (unstage): upload what its writers staged for S3;
    `StagedUploadsLeft` (Unavailable) names what S3 has not taken, and nothing is dropped.
    Nothing to do for another source or an empty uploads directory."""
    if not os.path.isdir(uploads) or not os.listdir(uploads):
        return
    spec = parse_parameters(parameters)
    if spec.source.scheme != "s3":
        return
    from cache_engine.ufs.s3 import S3Ufs
    from cache_engine.ufs.s3_staging import StagingDir
    from cache_engine.ufs.s3_writes import S3Writes

    ufs = S3Ufs(spec, parse_secrets(secrets))
    try:
        S3Writes(ufs, StagingDir(uploads)).drain()
    finally:
        ufs.close()
