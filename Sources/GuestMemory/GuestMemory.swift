// GuestMemory
