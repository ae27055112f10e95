from zsplg.cli import main

main()
