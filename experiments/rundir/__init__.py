"""The run directory of `experiments.train` as one guarded object (docs/run_directory.md).

`RunDirectory.open` opens `--model_dir` once; every file and subfolder of the run is then created,
replaced, read and removed relative to that open folder (`dir_fd`, `O_NOFOLLOW`, `O_DIRECTORY`),
so renaming the folder or planting a symbolic link anywhere inside it never redirects a write:

- a subfolder (`backup/`, `logs/`) is opened once, refusing a link, and is checked to be still
  there before each write into it: one that has become a link (or another folder) stops the run
  with an error instead of being written through;
- files are written under a fresh temporary name and renamed into place, replacing a link planted
  at their name instead of following it; libraries that need a path (Keras, h5py, matplotlib, the
  TensorBoard writer) get `/proc/self/fd/<fd>/<name>`, which resolves through the open folder;
- the chief holds an exclusive `flock` on `.dcm_lock` for the run's whole life: a second process
  on the same folder stops with one line naming the holder's PID;
- `.dcm_manifest.json` lists every file the run wrote (temporaries included, recorded before they
  are created), so `--overwrite` and the sweeps of stale files remove exactly those and nothing
  the user keeps in the folder. A run written before the manifest existed is adopted once: the
  names such a run writes are recorded as it is opened.

The modules, each named for what it holds (import them; the package re-exports nothing):

- `files`: the run's file names, JSON read (`DamagedJSON` for anything unreadable) and written
  atomically by path, the free-space and symbolic-link checks;
- `folder`: `Folder`, a folder held open, and the temporary names of its writes;
- `directory`: `RunDirectory`, `--model_dir` held open, with its lock and its manifest;
- `run`: `TrainingRun`, --model_dir as a run of `experiments.train` sees it, and what
  `experiments.compare` reads and writes in a run's folder;
- `history`: history.csv, rewritten whole after every epoch, and read;
- `checkpoints`: the crash-safe backup (`AtomicBackupAndRestore`, a Keras callback) and the
  fault tests' pauses (`debug_pause`).

`experiments.rundir` may import `experiments.common`; `experiments.common` imports nothing of it.
"""
