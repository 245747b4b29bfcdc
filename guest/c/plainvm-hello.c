/* plainvm-hello: prints a line; proves the guest helper build reaches the guest's /usr/bin. */
#include <stdio.h>

int main(void)
{
    puts("plainvm-hello: guest helpers installed");
    return 0;
}
