// VMM
