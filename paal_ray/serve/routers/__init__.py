"""One router per resource: runs, selections (and the selected slices' images), masks."""
