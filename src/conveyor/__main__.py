from conveyor.cli import main

# guarded: docparse's page pool starts processes with "spawn", which imports
# this module in each child as __mp_main__; unguarded, every child would run the CLI
if __name__ == "__main__":
    main()
