"""Checkpoints: one HDF5 file per saved step, written by every rank, read at any layout.

    layout.py      names inside the file (/model/<layer>/<param>, /optim/<state>/...),
                   format version, CRC-32 per dataset
    attributes.py  root attributes: step, seed, data position, config, schedule
    contents.py    which rank writes each parameter; a parameter's optimizer state
    save.py        parallel HDF5 writer and the rank-0 fallback; crash-safe publishing
    load.py        --resume resolution and checked, resharding loading
    plan_record.py the costs and cap the schedule's order was planned for (resume re-plans)
    folder.py      the run's checkpoint folder: latest, partial files, pruning
    report.py      `mpipipe ckpt inspect` and `verify`

The Trainer uses them (save_checkpoint, resume, periodic and SIGTERM saves);
`mpipipe.commands.ckpt` is the command line.
"""
