"""Entry kinds and result codes shared by both scanner implementations."""

FILE = 1
DIR = 2
SYMLINK = 3
SPECIAL = 4  # fifo, socket, device: reported, never backed up
ERROR = 5  # the entry could not be read; `extra` holds the errno

CHANGED = -1  # hash_file: the file changed while it was read

KIND_NAMES = {FILE: "file", DIR: "dir", SYMLINK: "symlink", SPECIAL: "special", ERROR: "error"}
