// X86Boot
