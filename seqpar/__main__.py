from seqpar.cli import main

main()
