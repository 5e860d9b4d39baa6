"""`make bench`: eddy against the physical references and the peers users pick.

    run.py        command line, order of work, cleanup on any exit
    source.py     the datasets on tmpfs and on one local S3 server; the raw S3 reference
    mounts.py     eddy, rclone and s3fs mounts behind one interface
    scenarios.py  the references and the cold / warm / hot reads every system gets
    model.py      a model loader's cold mmap reads, with and without eddy's prefetch
    measure.py    the timed reads, page-cache drops, peak RSS
    results.py    rows, ratios and the targets
    report.py     the printed table, the JSON and the PNG chart
"""
