// DiskImage
