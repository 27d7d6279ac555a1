import VireoCLI
VireoCommand.main()
